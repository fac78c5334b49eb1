"""Whole-model conversions behind ``examples/convert_checkpoint.py``.

* original AnyText2 checkpoint -> pipeline folder (``--from_original``)
* SD1.5 (+ OCR weights) -> fresh AnyText2 pipeline folder for training from scratch (``--from_sd15``)
* pipeline folder -> original checkpoint (``--to_original``)
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..configs import sd15_config
from ..utils.checkpoint_io import LazyStateDict
from .original import (
    CLIP_PREFIX,
    EMBEDDING_PREFIX,
    OCR_PREFIX,
    SCHEDULE_KEYS,
    convert_diffusion_models,
    convert_text_encoder,
    load_text_encoder_weights,
)
from .reference_layout import diffusion_layout
from .report import KeyReport, key_report
from .sd15 import anytext2_parts, load_original_config, load_sd15_components, placement_from_original
from .to_original import to_original_state_dict

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _scheduler(original_config: dict):
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in sd15_config("scheduler").items() if not k.startswith("_")}
    params = original_config["model"]["params"]
    cfg.update(
        beta_start=float(params.get("linear_start", cfg["beta_start"])),
        beta_end=float(params.get("linear_end", cfg["beta_end"])),
        num_train_timesteps=int(params.get("timesteps", cfg["num_train_timesteps"])),
    )
    return DDIMScheduler(**cfg)


def _clip_parts(clip_model_name_or_path: str | Path | None, what: str):
    """Tokenizer and CLIP text config from a local CLIP / SD1.5 folder (checkpoints carry neither)."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    if clip_model_name_or_path is None:
        raise ValueError(f"{what}: --clip_model_name_or_path is required (a local CLIP or SD1.5 folder)")
    root = Path(clip_model_name_or_path)
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    enc_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    if (enc_dir / "config.json").is_file():
        config = CLIPTextConfig.from_pretrained(enc_dir)
    else:
        config = CLIPTextConfig(**{k: v for k, v in sd15_config("text_encoder").items() if k != "architectures"})
    return tokenizer, config


def _save_pipeline(parts: dict, output_dir: str | Path, dtype: torch.dtype) -> None:
    from ..pipelines import AnyText2Pipeline

    for module in parts.values():
        if isinstance(module, torch.nn.Module) and dtype != torch.float32:
            module.to(dtype)
    pipe = AnyText2Pipeline.from_parts(parts)
    pipe.save_pretrained(output_dir, safe_serialization=True)


class _ComponentWriter:
    """Saves pipeline components one by one as ``AnyText2Pipeline.save_pretrained`` lays them out, then
    writes the ``model_index.json`` and ``pipeline.py`` it would write (never holding them all at once)."""

    def __init__(self, output_dir: str | Path, dtype: torch.dtype):
        self.output_dir, self.dtype, self.index = Path(output_dir), dtype, {}

    def __call__(self, name: str, component) -> None:
        from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

        if isinstance(component, torch.nn.Module) and self.dtype != torch.float32:
            component.to(self.dtype)
        kw = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
        component.save_pretrained(self.output_dir / name, **kw)
        self.index[name] = list(_fetch_class_library_tuple(component))
        gc.collect()

    def write_index(self) -> None:
        import diffusers

        from ..pipelines import AnyText2Pipeline
        from ..pipelines.community import write_community_pipeline

        write_community_pipeline(self.output_dir)  # as AnyText2Pipeline.save_pretrained does
        index = {"_class_name": AnyText2Pipeline.__name__, "_diffusers_version": diffusers.__version__}
        index.update(sorted(self.index.items()))
        with open(self.output_dir / "model_index.json", "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")


def convert_original_to_pipeline(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    original_config: str | Path | None = None,
    clip_model_name_or_path: str | Path | None = None,
    dtype: str = "fp32",
) -> KeyReport:
    """Released ``anytext_v2.0.ckpt`` / ``.safetensors`` (or a tool_add_anytext scratch file) -> folder.

    Memory: the checkpoint is read lazily (``LazyStateDict``) and each component is built from its own
    tensors, saved and released before the next, so the whole float32 model never exists at once."""
    from transformers import CLIPTextModel

    from ..models import AnyText2TextEmbeddingModel
    from ..models.ocr import recognizer_from_anytext2
    from .text_embedding import text_embedding_config_from_original, text_embedding_state_dict_from_original

    cfg = load_original_config(original_config)
    checkpoint = LazyStateDict(checkpoint_path)
    layout = diffusion_layout(cfg)
    for key, shape in layout.items():
        if key in checkpoint and checkpoint.shape(key) != shape:
            raise ValueError(f"{checkpoint_path}: {key} has shape {checkpoint.shape(key)}, config expects {shape}")
    used = set(layout)
    used |= {k for k in checkpoint if k.startswith((CLIP_PREFIX, OCR_PREFIX, EMBEDDING_PREFIX))}
    used |= SCHEDULE_KEYS & set(checkpoint)
    report = key_report(checkpoint, used, expected=set(layout))
    if report.missing:
        raise ValueError(f"{checkpoint_path}: {len(report.missing)} reference keys missing, e.g. {report.missing[:3]}")
    tokenizer, text_config = _clip_parts(clip_model_name_or_path, "--from_original")

    save = _ComponentWriter(output_dir, DTYPES[dtype])
    convert_diffusion_models(checkpoint, cfg, save)
    text_encoder = CLIPTextModel(text_config)
    load_text_encoder_weights(text_encoder, convert_text_encoder(checkpoint.with_prefix(CLIP_PREFIX)))
    save("text_encoder", text_encoder.eval())
    del text_encoder
    save("ocr", recognizer_from_anytext2(checkpoint.with_prefix(OCR_PREFIX), prefix=OCR_PREFIX).eval())
    te_state = text_embedding_state_dict_from_original(checkpoint.with_prefix(EMBEDDING_PREFIX))
    text_embedding = AnyText2TextEmbeddingModel(**text_embedding_config_from_original(te_state, cfg))
    text_embedding.load_state_dict(te_state, strict=True)
    del te_state
    save("text_embedding", text_embedding.eval())
    del text_embedding
    save("tokenizer", tokenizer)
    save("scheduler", _scheduler(cfg))
    save.write_index()
    return report


def convert_sd15_to_pipeline(
    sd15: str | Path,
    output_dir: str | Path,
    ocr_model: str | Path | None = None,
    original_config: str | Path | None = None,
    clip_model_name_or_path: str | Path | None = None,
    dtype: str = "fp32",
) -> None:
    """A fresh AnyText2 as the reference's tool_add_anytext.py builds it: WriteNet/AttnX from the UNet,
    the OCR weights in the frozen recognizer and in the trainable font recognizer."""
    from ..models import PPOCRRecognizer
    from ..models.ocr import convert_onnx, recognizer_from_anytext2

    cfg = load_original_config(original_config)
    sd15_parts = load_sd15_components(sd15, cfg, clip_model_name_or_path)
    sd15_parts.setdefault("scheduler", _scheduler(cfg))
    if ocr_model is None:
        ocr = convert_onnx()
    elif Path(ocr_model).is_dir():
        ocr = PPOCRRecognizer.from_pretrained(ocr_model)
    else:
        ocr = recognizer_from_anytext2(ocr_model)
    parts = anytext2_parts(sd15_parts, ocr, **placement_from_original(cfg, sd15_parts["unet"]))
    _save_pipeline(parts, output_dir, DTYPES[dtype])


def convert_pipeline_to_original(
    pipeline_dir: str | Path,
    output_file: str | Path,
    original_config: str | Path | None = None,
    dtype: str = "fp32",
) -> int:
    """Pipeline folder -> one ``.safetensors`` ControlLDM state dict the reference code loads strictly."""
    from ..pipelines import AnyText2Pipeline

    if not str(output_file).endswith(".safetensors"):
        raise ValueError(f"{output_file}: output must be a .safetensors file")
    cfg = load_original_config(original_config)
    pipe = AnyText2Pipeline.from_pretrained(pipeline_dir)
    if pipe.attnx.is_attached:
        pipe.attnx.detach(pipe.unet)
    try:
        state = to_original_state_dict(
            cfg,
            unet=pipe.unet,
            attnx=pipe.attnx,
            controlnet=pipe.controlnet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            text_embedding=pipe.text_embedding,
            ocr=pipe.ocr,
        )
    except ValueError as err:
        if original_config is not None:
            raise
        raise ValueError(
            f"{pipeline_dir}: not an SD1.5-sized model ({err}); pass --original_config with the reference model "
            "yaml of its size (--original_config tiny for the tiny test stack)"
        ) from None
    target = DTYPES[dtype]
    state = {
        k: (v.to(target) if v.is_floating_point() and k not in SCHEDULE_KEYS else v).contiguous()
        for k, v in state.items()
    }
    save_file(state, str(output_file))
    return len(state)
