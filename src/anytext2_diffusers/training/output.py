"""The final output folder: a complete ``AnyText2Pipeline`` (``from_pretrained(output_dir)`` loads it), in
float32, with the reference's DDIM sampler on the training betas (``AnyText2Pipeline.from_parts``)."""

from __future__ import annotations

import torch

from ..pipelines import AnyText2Pipeline
from ..utils.dtype import cast_model


def save_pipeline_folder(parts: dict, output_dir: str) -> None:
    """Components in float32 under ``output_dir`` + ``model_index.json``; checkpoints and logs are left alone."""
    for model in parts.values():
        if isinstance(model, torch.nn.Module) and model.dtype != torch.float32:
            cast_model(model, torch.float32)
    AnyText2Pipeline.from_parts(parts).save_pretrained(output_dir)
