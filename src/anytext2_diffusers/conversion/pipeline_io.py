"""Whole-model conversions behind ``examples/convert_checkpoint.py``.

* original AnyText2 checkpoint -> pipeline folder (``--from_original``)
* SD1.5 (+ OCR weights) -> fresh AnyText2 pipeline folder for training from scratch (``--from_sd15``)
* pipeline folder -> original checkpoint (``--to_original``)
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..configs import sd15_config
from ..utils.checkpoint_io import load_state_dict_file
from .original import (
    EMBEDDING_PREFIX,
    OCR_PREFIX,
    SCHEDULE_KEYS,
    build_diffusion_models,
    convert_text_encoder,
    load_text_encoder_weights,
    upcast_floats,
)
from .reference_layout import diffusion_layout
from .report import KeyReport, key_report
from .sd15 import init_anytext2_blocks, load_original_config, load_sd15_components
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
    pipe = AnyText2Pipeline(**parts)
    pipe.save_pretrained(output_dir, safe_serialization=True)


def convert_original_to_pipeline(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    original_config: str | Path | None = None,
    clip_model_name_or_path: str | Path | None = None,
    dtype: str = "fp32",
) -> KeyReport:
    """Released ``anytext_v2.0.ckpt`` / ``.safetensors`` (or a tool_add_anytext scratch file) -> folder."""
    from transformers import CLIPTextModel

    from ..models import AnyText2TextEmbeddingModel
    from ..models.ocr import recognizer_from_anytext2
    from .text_embedding import text_embedding_config_from_original, text_embedding_state_dict_from_original

    cfg = load_original_config(original_config)
    checkpoint = upcast_floats(load_state_dict_file(checkpoint_path))
    layout = diffusion_layout(cfg)
    for key, shape in layout.items():
        if key in checkpoint and tuple(checkpoint[key].shape) != shape:
            raise ValueError(
                f"{checkpoint_path}: {key} has shape {tuple(checkpoint[key].shape)}, config expects {shape}"
            )
    parts = build_diffusion_models(checkpoint, cfg)
    used = set(layout)

    tokenizer, text_config = _clip_parts(clip_model_name_or_path, "--from_original")
    text_encoder = CLIPTextModel(text_config)
    clip_sd = convert_text_encoder(checkpoint)
    load_text_encoder_weights(text_encoder, clip_sd)
    used |= {k for k in checkpoint if k.startswith("cond_stage_model.transformer.")}

    ocr = recognizer_from_anytext2(checkpoint, prefix=OCR_PREFIX)
    used |= {k for k in checkpoint if k.startswith(OCR_PREFIX)}
    te_state = text_embedding_state_dict_from_original(checkpoint)
    text_embedding = AnyText2TextEmbeddingModel(**text_embedding_config_from_original(te_state, cfg))
    text_embedding.load_state_dict(te_state, strict=True)
    used |= {k for k in checkpoint if k.startswith(EMBEDDING_PREFIX)}
    used |= SCHEDULE_KEYS & set(checkpoint)

    report = key_report(checkpoint, used, expected=set(layout))
    if report.missing:
        raise ValueError(f"{checkpoint_path}: {len(report.missing)} reference keys missing, e.g. {report.missing[:3]}")
    parts.update(
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=_scheduler(cfg),
        text_embedding=text_embedding.eval(),
        ocr=ocr.eval(),
    )
    _save_pipeline(parts, output_dir, DTYPES[dtype])
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
    from ..models import AnyText2TextEmbeddingModel, PPOCRRecognizer
    from ..models.ocr import convert_onnx, recognizer_from_anytext2

    cfg = load_original_config(original_config)
    parts = load_sd15_components(sd15, cfg, clip_model_name_or_path)
    parts.update(init_anytext2_blocks(parts["unet"], cfg))
    if ocr_model is None:
        ocr = convert_onnx()
    elif Path(ocr_model).is_dir():
        ocr = PPOCRRecognizer.from_pretrained(ocr_model)
    else:
        ocr = recognizer_from_anytext2(ocr_model)
    parts.setdefault("scheduler", _scheduler(cfg))
    parts["text_embedding"] = AnyText2TextEmbeddingModel.from_text_encoder(
        parts["text_encoder"], font_recognizer=copy.deepcopy(ocr)
    )
    parts["ocr"] = ocr.eval()
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
