"""Build the training components from the configuration.

Three starting points:

* SD1.5 (diffusers folder / Hub id, or a single-file checkpoint): UNet, VAE, CLIP, tokenizer and the
  scheduler config come from it; WriteNet and AttnX are made ``from_unet`` (``tool_add_anytext.py``
  semantics), the OCR recognizer from ``--ocr_model_name_or_path`` (default: the PP-OCRv3 ONNX shipped
  in rapidocr-onnxruntime, converted offline), and the text embedding's font recognizer is a copy of it;
* an AnyText2 pipeline folder (its ``model_index.json`` names ``AnyText2Pipeline``): every component
  is loaded from it, to fine-tune;
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
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.attnx import AnyText2AttnXModel
from ..models.ocr import PPOCRRecognizer, convert_onnx
from ..models.text_embedding import AnyText2TextEmbeddingModel
from ..models.writenet import AnyText2ControlNetModel

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


def _new_anytext2_parts(parts: dict, config) -> dict:
    """WriteNet, AttnX, OCR and text embedding for a plain SD1.5 set of parts."""
    unet = parts["unet"]
    ocr = parts.get("ocr") or load_ocr(config.ocr_model_name_or_path)
    parts = dict(parts)
    parts["ocr"] = ocr
    parts["controlnet"] = AnyText2ControlNetModel.from_unet(unet, glyph_scale=config.glyph_scale)
    parts["attnx"] = AnyText2AttnXModel.from_unet(
        unet,
        in_mid_block=config.attnx_mid_block,
        in_up_blocks=tuple(config.attnx_up_blocks),
        in_down_blocks=tuple(config.attnx_down_blocks),
        scale=config.attnx_scale,
    )
    # The font recognizer starts as a copy of the OCR weights (tool_add_anytext.py's add_style_ocr);
    # without train_font_ocr the reference has no copy and reads fonts with the frozen glyph recognizer.
    parts["text_embedding"] = AnyText2TextEmbeddingModel.from_text_encoder(
        parts["text_encoder"],
        font_recognizer=ocr,
        style_ocr_trainable=config.train_font_ocr,
        neck_length=ocr.config.image_width // 8,  # the recognizer's sequence length (40 for PP-OCRv3)
        neck_dim=ocr.config.neck_dims,
    )
    return parts


def _anytext2_parts(path: str, config) -> dict:
    kw = dict(revision=config.revision)
    parts = {
        name: cls.from_pretrained(path, subfolder=name, **kw)
        for name, cls in MODEL_CLASSES.items()
        if name not in ("unet", "vae")
    }
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

        parts = _new_anytext2_parts(tiny_components(seed=config.seed), config)
    elif is_anytext2_pipeline(config.pretrained_model_name_or_path, config.revision):
        parts = _anytext2_parts(config.pretrained_model_name_or_path, config)
    else:
        parts = _new_anytext2_parts(_sd15_parts(config), config)
    # Training always samples noise with DDPM's forward process (whatever sampler a pipeline ships).
    parts["scheduler"] = DDPMScheduler.from_config(parts["scheduler"].config)
    for name in (*MODEL_CLASSES, "text_encoder"):
        if parts[name].dtype != torch.float32:
            parts[name] = parts[name].to(torch.float32)
    return parts
