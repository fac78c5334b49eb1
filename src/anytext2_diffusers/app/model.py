"""Which model the app opens, loaded once per process."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

# Where the README's demo command (``train_anytext2.py --demo``) writes its pipeline folder
# (``training.config.DEMO_PRESET["output_dir"]``; a test keeps the two equal).
DEMO_OUTPUT_DIR = "anytext2-demo"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_model_source() -> str | None:
    """The demo's output folder when it exists in the working directory, else None (the shipped demo model)."""
    return DEMO_OUTPUT_DIR if os.path.isfile(os.path.join(DEMO_OUTPUT_DIR, "model_index.json")) else None


def default_pipeline():
    """The model opened without ``--pretrained_model_name_or_path``: the README demo's output (a fine-tune of
    the shipped demo model) if present, else the shipped demo model itself (``testing.demo_pipeline()``:
    package data, so the app starts offline on any machine and writes text)."""
    source = default_model_source()
    if source is not None:
        from ..pipelines import AnyText2Pipeline

        return AnyText2Pipeline.from_pretrained(source), source
    from ..testing import demo_model_dir, demo_pipeline

    return demo_pipeline(), f"shipped demo model ({demo_model_dir()})"


def load_pipeline(pretrained_model_name_or_path: str | None = None, device: str = "cpu", dtype: str = "fp32"):
    """(pipeline on ``device`` in ``dtype``, a description of where it came from). A folder or Hub id loads
    with ``AnyText2Pipeline.from_pretrained``; None opens :func:`default_pipeline`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if pretrained_model_name_or_path:
        from ..pipelines import AnyText2Pipeline

        pipe = AnyText2Pipeline.from_pretrained(pretrained_model_name_or_path, torch_dtype=torch_dtype)
        source = pretrained_model_name_or_path
    else:
        pipe, source = default_pipeline()
        if torch_dtype != torch.float32:
            pipe = pipe.to(dtype=torch_dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s on %s in %s", source, device, dtype)
    return pipe, source


def _is_tiny_stack(pipe) -> bool:
    """The tiny UNet of ``testing`` (random, the shipped demo model or a fine-tune of it), not an SD1.5 one."""
    from ..testing import TINY_CHANNELS

    return tuple(pipe.unet.config.block_out_channels) == TINY_CHANNELS


def default_size(pipe) -> int:
    """Default canvas side: 512 (SD1.5) for real models; 128 for the tiny stack (the shipped demo model and the
    README demo's fine-tune of it were trained at 128 px, and random tiny weights draw no better larger)."""
    return 128 if _is_tiny_stack(pipe) else 512


def default_guidance(pipe) -> float:
    """Default CFG scale: the reference's 7.5 for real models; for the tiny stack the demo recipe's evaluation
    scale (``demo_model.EVAL_GUIDANCE``, 3), at which the shipped demo model's words read best."""
    from ..demo_model import EVAL_GUIDANCE

    return EVAL_GUIDANCE if _is_tiny_stack(pipe) else 7.5
