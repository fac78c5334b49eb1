"""Tiny, offline components with the SD1.5 block structure: random ones, and the trained demo model.

One factory for every test, the demo and users' own CI. The shapes follow the parity pack's tiny
model (channels 32/32/64/64, 2 heads, context 32) so a single tiny shape serves every check.
``demo_pipeline()`` loads the trained 128 px demo model shipped as package data (``demo_model_dir()``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import tempfile

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .utils.assets import demo_model_dir

TINY_CHANNELS = (32, 32, 64, 64)
TINY_CONTEXT_DIM = 32
TINY_HEADS = 2
PLACEHOLDER = "*"


def tiny_unet_config(latent_channels: int = 4, norm_num_groups: int = 32) -> dict:
    """SD1.5's UNet block layout (3 cross-attn down blocks + 1 plain, mirrored up, 2 layers each); its in/out
    channels are the VAE's ``latent_channels``. ``norm_num_groups`` 32 is SD1.5's; on these 32-channel levels it
    is one channel per group (the demo model's UNet uses 8, ``demo_model.UNET_NORM_GROUPS``)."""
    return dict(
        sample_size=64,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=TINY_CHANNELS,
        layers_per_block=2,
        attention_head_dim=TINY_HEADS,  # SD1.5 (legacy naming): this is the number of heads
        cross_attention_dim=TINY_CONTEXT_DIM,
        norm_num_groups=norm_num_groups,
    )


def tiny_vae_config(latent_channels: int = 4) -> dict:
    """4 levels so that latent = image / 8 as in SD1.5."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=TINY_CHANNELS,
        layers_per_block=2,
        latent_channels=latent_channels,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def tiny_text_encoder_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_CONTEXT_DIM,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer built in code: every printable ASCII character is a token
    (with and without ``</w>``), there are no merges, so ``*`` is always exactly one token."""
    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)
    return tokenizer


def sd15_scheduler() -> DDPMScheduler:
    """The training scheduler with SD1.5's betas (scaled linear 0.00085 -> 0.012, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )


def tiny_components(seed: int = 0, latent_channels: int = 4, unet_norm_groups: int = 32) -> dict:
    """Build ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` offline.

    Weights are random but deterministic in ``seed``; everything is float32 on the CPU. ``latent_channels``:
    the VAE's latent channels and the UNet's in/out channels (4 as SD1.5; the demo model may use more).
    ``unet_norm_groups``: the UNet's GroupNorm groups (``tiny_unet_config``).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(latent_channels, unet_norm_groups))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config(latent_channels))
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(tiny_text_encoder_config(len(tokenizer)))
    for model in (unet, vae, text_encoder):
        model.eval()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sd15_scheduler())


def tiny_recognizer(seed: int = 0):
    """A PP-OCRv3-shaped recognizer with random weights whose BatchNorm statistics were re-estimated on
    random inputs: with the default 0/1 running statistics a random recognizer's outputs do not depend
    on its input, which would make every OCR-based test vacuous. Real weights: ``models.ocr.convert_onnx``."""
    from .models.ocr import PPOCRRecognizer

    torch.manual_seed(seed)
    model = PPOCRRecognizer()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 48, 320, generator=generator) * 2 - 1)
    return model.eval()


def tiny_pipeline(seed: int = 0):
    """A complete ``AnyText2Pipeline`` on the tiny components (random weights, offline, CPU, float32).

    The glyph recognizer ``ocr`` is a default-size PP-OCRv3 recognizer (random, untrained; the text embedding
    needs its 40x64 neck), and the font recognizer is its copy, as ``from_text_encoder`` makes it. The
    zero-initialised layers (WriteNet's hint fusion and residual outputs, the text embedding's glyph, font
    and colour projections) get small random weights, so every condition reaches the image and tests that
    compare conditions can fail.
    """
    from .conversion.sd15 import anytext2_parts
    from .pipelines import AnyText2Pipeline

    ocr = tiny_recognizer(seed + 4)
    torch.manual_seed(seed + 3)
    parts = anytext2_parts(tiny_components(seed), ocr)
    controlnet, text_embedding = parts["controlnet"], parts["text_embedding"]
    zeroed = [controlnet.fuse_block, controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks]
    zeroed.extend(m[0] for m in (text_embedding.proj, text_embedding.style_proj, text_embedding.color_proj))
    with torch.no_grad():
        for module in zeroed:
            for p in module.parameters():
                p.normal_(0.0, 0.05)
    for name in ("controlnet", "attnx", "ocr", "text_embedding"):
        parts[name].eval()
    pipe = AnyText2Pipeline.from_parts(parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quick_generate(pipe, size: int = 64, steps: int = 2, seed: int = 0, output_type: str = "latent"):
    """One short, deterministic call of an AnyText2 pipeline (one line "ok" in a centred box): the probe
    the tests use to compare two pipelines' outputs."""
    import numpy as np

    mask = np.zeros((size, size), np.uint8)
    mask[size * 5 // 16 : size * 10 // 16, size // 8 : size * 7 // 8] = 255
    with torch.no_grad():
        return pipe(
            prompt="a sign",
            texts=["ok"],
            positions=mask,
            height=size,
            width=size,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
        ).images


# --- the shipped demo model ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _converted_rapidocr_recognizer():
    from .models.ocr import convert_onnx

    return convert_onnx().eval()


def rapidocr_recognizer():
    """The PP-OCRv3 recognizer rapidocr-onnxruntime ships, converted once per process (~0.5 s) and handed
    out as a fresh copy each call (a pipeline may cast or move it). Without rapidocr-onnxruntime: an error
    with its install command."""
    return copy.deepcopy(_converted_rapidocr_recognizer())


_DEMO_DIFFUSERS_PARTS = ("unet", "vae", "controlnet", "attnx", "text_embedding")
DEMO_WEIGHT_FILES = {name: f"{name}/diffusion_pytorch_model.safetensors" for name in _DEMO_DIFFUSERS_PARTS}
DEMO_WEIGHT_FILES["text_encoder"] = "text_encoder/model.safetensors"


def check_demo_model_files(folder: str) -> None:
    """FileNotFoundError naming ``folder`` and what is missing, before diffusers' loader fails on it: the package
    installed without its data, a folder never exported, or weights left as Git LFS pointers (not fetched)."""
    hint = "(export it: examples/make_demo_model.py, docs/demo_model.md)"
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(f"the demo model is missing: {folder} has no model_index.json {hint}")
    missing = [rel for rel in DEMO_WEIGHT_FILES.values() if not os.path.isfile(os.path.join(folder, rel))]
    if missing:
        raise FileNotFoundError(f"the demo model in {folder} lacks its weights: {', '.join(missing)} {hint}")
    for rel in DEMO_WEIGHT_FILES.values():
        with open(os.path.join(folder, rel), "rb") as f:
            if f.read(24).startswith(b"version https://git-lfs"):
                raise FileNotFoundError(
                    f"{os.path.join(folder, rel)} is a Git LFS pointer, not the weights (git lfs pull)"
                )


def demo_pipeline(dtype: torch.dtype = torch.float32, device: str = "cpu", folder: str | None = None):
    """The shipped demo model (trained in-project at 128 px, ``docs/demo_model.md``) as an ``AnyText2Pipeline``
    in ``dtype`` on ``device``, progress bar off. float32 by default: the weights are fp16 on disk, but CPU
    fp16 is slow and some CPU ops have no fp16 kernel. The recognizer is rapidocr's, converted
    (``rapidocr_recognizer``). ``folder``: another exported demo model (default: the package's)."""
    from .pipelines import AnyText2Pipeline
    from .utils.dtype import cast_model, dtype_kwarg

    folder = folder or demo_model_dir()
    check_demo_model_files(folder)
    ocr = cast_model(rapidocr_recognizer(), dtype)
    pipe = AnyText2Pipeline.from_pretrained(folder, ocr=ocr, **dtype_kwarg(dtype))
    if torch.device(device).type != "cpu":  # loaded on the CPU (moving fp16 "to" it only warns)
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "controlnet", "attnx", "text_embedding", "vae", "text_encoder", "ocr"):
        getattr(pipe, name).eval()
    return pipe
