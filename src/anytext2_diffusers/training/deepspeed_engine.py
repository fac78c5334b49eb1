"""DeepSpeed through accelerate: what the loop does differently when ``accelerate launch`` uses a DeepSpeed
config (``configs/accelerate/deepspeed_zero2.yaml``). The engine casts the module to fp16/bf16 and steps
inside ``accelerator.backward``; see docs/scaling.md (DeepSpeed ZeRO-2) for what each piece fixed.

Saving the float32 masters instead of the engine's half-precision copies: ``full_weights``.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)


def requested() -> bool:
    """``accelerate launch`` was given a DeepSpeed config (before the ``Accelerator`` exists)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def skip_import_unless_requested() -> None:
    """accelerate's ``unwrap_model`` imports deepspeed whenever it is installed, only to test ``isinstance``
    against its engine; the import costs seconds and prints DeepSpeed's accelerator warning on every run.
    Without a DeepSpeed launch no model can be a DeepSpeed engine, so accelerate is told it is absent."""
    if requested():
        return
    import accelerate.utils.other

    accelerate.utils.other.is_deepspeed_available = lambda: False


def active(accelerator) -> bool:
    """The prepared run uses DeepSpeed (an accelerator without ``state``, e.g. a test double: no)."""
    return getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None) is not None


def autocast(accelerator, dtype: torch.dtype):
    """The forward's autocast. accelerate's (``accelerator.autocast``, and the one ``prepare`` wraps around
    a DDP model's forward) is off under DeepSpeed, whose fp16/bf16 engine casts the module's parameters
    to half precision instead; DeepSpeed's own input cast (fp16 ``auto_cast``) reaches tensors, lists and
    dicts, not a ``Batch``, and the step makes float32 tensors of its own (noise, glyphs, positions). So
    under DeepSpeed the forward runs in ``torch.autocast`` of the engine's dtype."""
    if not active(accelerator) or dtype == torch.float32:
        return accelerator.autocast()
    return torch.autocast(accelerator.device.type, dtype=dtype)


def set_clipping(accelerator, max_grad_norm: float | None) -> None:
    """Under DeepSpeed the engine clips, inside ``accelerator.backward`` (its step), and the loop's
    ``clip_grad_norm_`` only returns the norm the engine measured. accelerate fills an absent or ``auto``
    ``gradient_clipping`` with 1.0; it is set to ``--max_grad_norm`` instead (0 = off, the reference), so the
    flag means the same under DDP and DeepSpeed. A number in the DeepSpeed config is kept."""
    if not active(accelerator):
        return
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
    value = float(max_grad_norm or 0.0)
    if ds_config.get("gradient_clipping", "auto") == "auto":
        ds_config["gradient_clipping"] = value
    elif float(ds_config["gradient_clipping"]) != value:
        logger.warning(
            "DeepSpeed config gradient_clipping=%s overrides --max_grad_norm=%s",
            ds_config["gradient_clipping"],
            max_grad_norm,
        )


@contextlib.contextmanager
def frozen_step(accelerator, optimizer, freeze: bool):
    """Under DeepSpeed the engine steps inside ``accelerator.backward`` at the last micro-step of a window, so
    the loop cannot skip that step as it does under DDP; for a window with a non-finite loss it runs with
    learning rate 0 instead: AdamW's update and its decoupled weight decay are both scaled by the learning
    rate, so the weights (float32 masters and their half-precision copies) stay exactly as they were. Its
    moments still see the zeroed gradient. Elsewhere: nothing."""
    if not freeze or not active(accelerator):
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr
