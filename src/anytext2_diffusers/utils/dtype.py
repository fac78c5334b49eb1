"""Casting a model's dtype without diffusers' spurious warning.

``ModelMixin.to(dtype)`` warns "There are modules in X that should be kept in float32: []" for every
model, even when the list is empty; a model with no float32 modules to keep is cast by ``nn.Module.to``,
which does the same work quietly. A model that does list some keeps diffusers' path (and its warning).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    if getattr(model, "_keep_in_fp32_modules", None):
        return model.to(dtype=dtype)
    return nn.Module.to(model, dtype=dtype)


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers takes it (``torch_dtype`` is deprecated
    there and warns), ``torch_dtype`` on older diffusers."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present where `dtype` is
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


class _EmptyFloat32Warning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextlib.contextmanager
def no_empty_float32_warning():
    """Drops that same empty warning while open: diffusers' ``save_lora_adapter`` calls ``self.to(dtype=None)``,
    which casts nothing and still warns once per save."""
    log, quiet = logging.getLogger("diffusers.models.modeling_utils"), _EmptyFloat32Warning()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)
