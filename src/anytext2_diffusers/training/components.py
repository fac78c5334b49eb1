"""Build the training components from the configuration, and the training model on them.

Three starting points:

* SD1.5 (diffusers folder / Hub id, or a single-file checkpoint): UNet, VAE, CLIP, tokenizer and the
  scheduler config come from it; WriteNet and AttnX are made ``from_unet`` (``tool_add_anytext.py``
  semantics), the OCR recognizer from ``--ocr_model_name_or_path`` (default: the PP-OCRv3 ONNX shipped
  in rapidocr-onnxruntime, converted offline), and the text embedding's font recognizer is a copy of it;
* an AnyText2 pipeline folder (its ``model_index.json`` names ``AnyText2Pipeline``): every component
  is loaded from it, to fine-tune; the recognizer from ``--ocr_model_name_or_path`` if given, and a folder
  shipped without ``ocr/`` (the demo model, ``testing.demo_model_dir()``) gets rapidocr's, converted;
* ``--tiny_model``: the tiny offline random stack of :mod:`anytext2_diffusers.testing`.

Component names are the pipeline's: vae, text_encoder, tokenizer, unet, controlnet, attnx, scheduler,
text_embedding, ocr.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from transformers import CLIPTextModel, CLIPTokenizer

from ..conversion.sd15 import anytext2_parts
from ..models.attnx import AnyText2AttnXModel
from ..models.controlnet import AnyText2ControlNetModel
from ..models.ocr import PPOCRRecognizer, convert_onnx
from ..models.text_embedding import AnyText2TextEmbeddingModel
from ..utils.dtype import cast_model
from . import lora
from .precision import align_layer_inputs
from .step import AnyText2TrainingModel, FrozenParts
from .trainable import apply_trainable

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "AnyText2Pipeline"
TRAINABLE_COMPONENTS = ("controlnet", "attnx", "text_embedding", "unet")
MODEL_CLASSES = {
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
    "controlnet": AnyText2ControlNetModel,
    "attnx": AnyText2AttnXModel,
    "text_embedding": AnyText2TextEmbeddingModel,
    "ocr": PPOCRRecognizer,
}


def is_anytext2_pipeline(path: str | None, revision: str | None = None) -> bool:
    """A folder or Hub repo whose ``model_index.json`` names ``AnyText2Pipeline``."""
    if not path or os.path.isfile(path):
        return False
    index = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        try:
            from huggingface_hub import hf_hub_download

            index = hf_hub_download(path, "model_index.json", revision=revision)
        except Exception:  # noqa: BLE001 - offline, or a repo without one: treat it as SD1.5
            return False
    if not os.path.isfile(index):
        return False
    with open(index, encoding="utf-8") as f:
        return json.load(f).get("_class_name") == PIPELINE_CLASS


def load_ocr(name_or_path: str | None) -> PPOCRRecognizer:
    """A saved ``PPOCRRecognizer`` folder, or (None) the ONNX model of rapidocr-onnxruntime converted offline."""
    if name_or_path:
        return PPOCRRecognizer.from_pretrained(name_or_path).eval()
    logger.info("converting the PP-OCRv3 ONNX recognizer shipped with rapidocr-onnxruntime")
    return convert_onnx().eval()


def _sd15_parts(config) -> dict:
    path, kw = config.pretrained_model_name_or_path, dict(revision=config.revision, variant=config.variant)
    if path is None:
        raise ValueError("--pretrained_model_name_or_path is required (or --tiny_model / --demo)")
    if os.path.isfile(path):  # single-file SD1.5 checkpoint
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(path)
        return dict(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            scheduler=pipe.scheduler,
        )
    return dict(
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=config.revision),
        scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", revision=config.revision),
    )


def new_anytext2_parts(sd15: dict, config) -> dict:
    """A fresh AnyText2 on SD1.5's parts, placed and sized as ``config`` says."""
    return anytext2_parts(
        sd15,
        load_ocr(config.ocr_model_name_or_path),
        glyph_scale=config.glyph_scale,
        attnx_mid_block=config.attnx_mid_block,
        attnx_up_blocks=tuple(config.attnx_up_blocks),
        attnx_down_blocks=tuple(config.attnx_down_blocks),
        attnx_scale=config.attnx_scale,
        train_font_ocr=config.train_font_ocr,
    )


def _pipeline_ocr(path: str, config) -> PPOCRRecognizer:
    """The glyph recognizer of a pipeline folder: ``--ocr_model_name_or_path`` if given, else the folder's
    ``ocr`` component, else (a local folder shipped without it, as the demo model) rapidocr's, converted."""
    if config.ocr_model_name_or_path:
        return load_ocr(config.ocr_model_name_or_path)
    if os.path.isdir(path) and not os.path.isdir(os.path.join(path, "ocr")):
        logger.info("%s has no ocr component: using the PP-OCRv3 recognizer of rapidocr-onnxruntime", path)
        return load_ocr(None)
    return PPOCRRecognizer.from_pretrained(path, subfolder="ocr", revision=config.revision).eval()


def _anytext2_parts(path: str, config) -> dict:
    kw = dict(revision=config.revision)
    parts = {
        name: cls.from_pretrained(path, subfolder=name, **kw)
        for name, cls in MODEL_CLASSES.items()
        if name not in ("unet", "vae", "ocr")
    }
    parts["ocr"] = _pipeline_ocr(path, config)
    parts["unet"] = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=config.variant, **kw)
    parts["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=config.variant, **kw)
    parts["text_encoder"] = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=config.variant, **kw)
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
    parts["scheduler"] = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    parts["attnx"].scale = config.attnx_scale
    # The loaded AttnX/WriteNet fix their placement and glyph scale; the config follows them (it decides which
    # UNet q/k/v get gradients and is saved with the run).
    attnx_cfg = parts["attnx"].config
    placement = dict(
        attnx_mid_block=bool(attnx_cfg.in_mid_block),
        attnx_up_blocks=list(attnx_cfg.in_up_blocks),
        attnx_down_blocks=list(attnx_cfg.in_down_blocks),
        glyph_scale=int(parts["controlnet"].config.glyph_scale),
    )
    for key, value in placement.items():
        if getattr(config, key) != value:
            logger.info("%s = %s from the pipeline's components (was %s)", key, value, getattr(config, key))
            setattr(config, key, value)
    return parts


def load_components(config) -> dict:
    """All nine components, float32, on the CPU; ``scheduler`` is the DDPM training scheduler."""
    if config.tiny_model:
        from ..testing import tiny_components

        parts = new_anytext2_parts(tiny_components(seed=config.seed), config)
    elif is_anytext2_pipeline(config.pretrained_model_name_or_path, config.revision):
        parts = _anytext2_parts(config.pretrained_model_name_or_path, config)
    else:
        parts = new_anytext2_parts(_sd15_parts(config), config)
    # Training always samples noise with DDPM's forward process (whatever sampler a pipeline ships).
    parts["scheduler"] = DDPMScheduler.from_config(parts["scheduler"].config)
    if config.prediction_type:  # as diffusers' training examples: the saved scheduler then samples the same way
        parts["scheduler"].register_to_config(prediction_type=config.prediction_type)
    for name in (*MODEL_CLASSES, "text_encoder"):
        if parts[name].dtype != torch.float32:
            parts[name] = parts[name].to(torch.float32)
    return parts


def use_channels_last(*models) -> None:
    """NHWC weights for the convolution-heavy models (UNet, WriteNet): faster convolutions on tensor
    cores under fp16/bf16. Not for the VAE encoder input (it changes its numerics, see step.py)."""
    for model in models:
        model.to(memory_format=torch.channels_last)


def compile_models(model, backend: str = "inductor", mode: str | None = None) -> None:
    """``torch.compile`` the UNet and WriteNet of an ``AnyText2TrainingModel`` in place (their
    ``forward``; AttnX runs inside the UNet's blocks through hooks and is traced with it). In place keeps
    the parameter names, so checkpoints and ``save_pretrained`` see no ``_orig_mod.`` prefix."""
    for name in ("unet", "controlnet"):
        getattr(model, name).compile(backend=backend, mode=mode)
    logger.info("torch.compile: unet, controlnet (backend=%s, mode=%s)", backend, mode or "default")


def _move(model, device, dtype) -> None:
    """``model.to`` that leaves the dtype alone when it already matches (diffusers warns on every cast)."""
    model.to(device)
    if model.dtype != dtype:
        cast_model(model, dtype)


def _upcast_trainable_layers(model) -> None:
    """Layers holding trainable weights get float32 buffers too: a BatchNorm with float32 weights but
    half-precision running statistics fails on the CPU and loses precision on the GPU."""
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != torch.float32:
                    setattr(module, name, buf.float())


def setup_training_model(parts: dict, config, device, weight_dtype: torch.dtype, upcast_buffers: bool = True):
    """The one model set-up of the loop, the tests and the benchmark: LoRA adapters (``--lora_rank``), the
    trainable selection, frozen weights in ``weight_dtype`` and trainable ones as float32 masters (with
    float32 buffers in their layers), gradient checkpointing, channels_last, torch.compile.
    ``upcast_buffers=False`` (DeepSpeed): the engine casts every parameter to its fp16/bf16 and keeps the
    float32 masters itself, so the buffers stay in ``weight_dtype`` with their layers' weights.
    Returns (``AnyText2TrainingModel``, trainable groups)."""
    trainable = {name: parts[name] for name in TRAINABLE_COMPONENTS}
    lora.add_adapters(trainable, config)  # before the trainable selection
    groups = apply_trainable(trainable, config)
    for name in ("vae", "text_encoder", "ocr"):
        # Frozen: the OCR losses back-propagate through the VAE decoder and the recognizer to the latents,
        # never into their weights (weight gradients there were computed, kept and never used).
        parts[name].requires_grad_(False)
        _move(parts[name], device, weight_dtype)
    for name, model in trainable.items():
        half = name in ("unet", "text_embedding", *lora.lora_components(config))
        _move(model, device, weight_dtype if half else torch.float32)
        cast_training_params(model, dtype=torch.float32)
        if upcast_buffers:
            _upcast_trainable_layers(model)
    if weight_dtype != torch.float32:  # half-precision frozen layers next to float32 trainable ones
        align_layer_inputs(*(parts[name] for name in (*TRAINABLE_COMPONENTS, "vae", "text_encoder", "ocr")))
    if config.gradient_checkpointing:
        parts["controlnet"].enable_gradient_checkpointing()
        parts["unet"].enable_gradient_checkpointing()
    if config.channels_last:
        use_channels_last(parts["unet"], parts["controlnet"])
    frozen = FrozenParts(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["ocr"], parts["scheduler"])
    model = AnyText2TrainingModel(
        parts["unet"], parts["controlnet"], parts["attnx"], parts["text_embedding"], frozen, config
    )
    if config.torch_compile:
        compile_models(model, config.torch_compile_backend, config.torch_compile_mode)
    return model, groups


def build_training_model(config, device="cpu", dtype=torch.float32, base: dict | None = None):
    """(AnyText2TrainingModel in train mode, trainable groups, components) without Accelerate, for tests and
    ``benchmarks/bench_train_step.py``. ``base``: SD1.5 parts (unet, vae, text_encoder, tokenizer,
    scheduler) to build on instead of ``config``'s model."""
    parts = load_components(config) if base is None else new_anytext2_parts(base, config)
    model, groups = setup_training_model(parts, config, device, dtype)
    return model.train(), groups, parts
