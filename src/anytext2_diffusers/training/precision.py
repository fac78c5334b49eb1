"""Mixed precision that holds by construction: frozen weights in fp16/bf16, trainable ones in float32,
and every layer fed its own weights' dtype, with or without autocast.

Under ``--mixed_precision fp16`` a GPU run takes accelerate's ``torch.autocast(float16)`` +
``GradScaler`` path. accelerate switches both off on the CPU (it raises for fp16 elsewhere and leaves a
CPU run without autocast, where half-precision frozen layers then meet float32 activations). torch has
a CPU float16 autocast and a CPU ``GradScaler``, so a CPU run is given the same two pieces
(``enable_native_fp16``): the loop, the scaler's unscale/skip logic and the dtype flow are the ones a GPU
run executes (slowly: fp16 is not a CPU speed-up; it is there so the path is exercised and tested).

``align_layer_inputs`` is what makes a component with mixed dtypes (a frozen fp16 UNet whose decoder
trains in float32, a font recognizer whose CTC head is frozen, LoRA on half-precision layers) safe
without autocast: each layer that owns weights casts its floating-point inputs to their dtype.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def enable_native_fp16(accelerator) -> bool:
    """Give a CPU fp16 run accelerate's GPU path: native autocast (``accelerator.autocast`` and the forward
    wrapper ``prepare`` installs) and a ``GradScaler`` (used by ``backward``, ``clip_grad_norm_`` and the
    prepared optimizer). Call before ``accelerator.prepare``. Returns whether it changed anything."""
    if accelerator.mixed_precision != "fp16" or accelerator.device.type != "cpu" or accelerator.native_amp:
        return False
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None or accelerator.is_fsdp2:
        return False  # refused before start-up (preflight.precision_error)
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")
    logger.warning(
        "--mixed_precision fp16 on the CPU: float16 autocast + GradScaler as on a GPU (correct, but slower than fp32 "
        "here; use it to test the GPU code path)"
    )
    return True


def _cast(x, dtype: torch.dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def _own_dtype(module: nn.Module) -> torch.dtype | None:
    dtypes = {p.dtype for p in module.parameters(recurse=False) if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def align_layer_inputs(*models: nn.Module) -> list:
    """Forward pre-hooks on every layer that owns floating-point weights of one dtype: floating-point
    tensor inputs (positional and keyword) are cast to that dtype. Under autocast this changes nothing
    that autocast would not cast anyway; without it, it is what keeps fp16 and float32 layers of one
    model from meeting in a matmul. Returns the hook handles."""
    handles = []
    for model in models:
        for module in model.modules():
            if _own_dtype(module) is None:
                continue
            handles.append(module.register_forward_pre_hook(_cast_to_own_dtype, with_kwargs=True))
    return handles


def _cast_to_own_dtype(module: nn.Module, args, kwargs):
    # The dtype is read at call time: DeepSpeed (bf16/fp16) and ``.to()`` recast weights after the hooks are set.
    dtype = _own_dtype(module)
    if dtype is None:
        return None
    return tuple(_cast(a, dtype) for a in args), {k: _cast(v, dtype) for k, v in kwargs.items()}


def has_mixed_dtypes(model: nn.Module) -> bool:
    return len({p.dtype for p in model.parameters() if p.is_floating_point()}) > 1
