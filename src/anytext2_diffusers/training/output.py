"""The final output folder: a complete ``AnyText2Pipeline`` (``from_pretrained(output_dir)`` loads it).

Written with ``AnyText2Pipeline.save_pretrained`` when the pipeline package is importable; otherwise
each component's ``save_pretrained`` plus the ``model_index.json`` diffusers would write (same layout).
The sampler saved is DDIM with the training betas (the reference samples with DDIM).
"""

from __future__ import annotations

import json
import logging
import os

import diffusers
import torch
from diffusers import DDIMScheduler

from ..utils.dtype import cast_model

logger = logging.getLogger(__name__)

PIPELINE_COMPONENTS = (
    "vae",
    "text_encoder",
    "tokenizer",
    "unet",
    "controlnet",
    "attnx",
    "scheduler",
    "text_embedding",
    "ocr",
)


def inference_scheduler(noise_scheduler) -> DDIMScheduler:
    return DDIMScheduler.from_config(noise_scheduler.config, set_alpha_to_one=False, clip_sample=False)


def _library(obj) -> str:
    """diffusers' rule: standard libraries by name, other classes by their module path."""
    module = type(obj).__module__
    top = module.split(".")[0]
    return top if top in ("diffusers", "transformers") else module


def save_pipeline_folder(parts: dict, output_dir: str) -> None:
    """Components in float32 under ``output_dir`` + ``model_index.json``; checkpoints and logs are left alone."""
    components = {name: parts[name] for name in PIPELINE_COMPONENTS if name != "scheduler"}
    components["scheduler"] = inference_scheduler(parts["scheduler"])
    for name, model in components.items():
        if isinstance(model, torch.nn.Module) and model.dtype != torch.float32:
            components[name] = cast_model(model, torch.float32)
    try:
        from ..pipelines import AnyText2Pipeline
    except ImportError:
        AnyText2Pipeline = None
    if AnyText2Pipeline is not None:
        AnyText2Pipeline(**components).save_pretrained(output_dir)
        return
    os.makedirs(output_dir, exist_ok=True)
    index = {"_class_name": "AnyText2Pipeline", "_diffusers_version": diffusers.__version__}
    for name, component in components.items():
        component.save_pretrained(os.path.join(output_dir, name))
        index[name] = [_library(component), type(component).__name__]
    with open(os.path.join(output_dir, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    logger.info("AnyText2Pipeline is not importable here: wrote the components and model_index.json by hand")
