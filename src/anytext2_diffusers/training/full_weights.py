"""Full-precision, whole weights for the component folders of checkpoints and for the final folder, when
the prepared model does not hold them itself:

* FSDP: parameters are ``DTensor`` shards; the full state dict is gathered (``fsdp.full_state_dict``).
* DeepSpeed with fp16/bf16: the engine casts the module to half precision and keeps the float32 masters
  partitioned in its ZeRO optimizer. Saving the module would round every trained weight to fp16/bf16; the
  masters are assembled instead (``deepspeed.utils.safe_get_full_fp32_param``), so the folders hold what
  DDP's float32 masters would be.

``gather`` is a collective: every process calls it, in the same order.
"""

from __future__ import annotations

import torch

from . import deepspeed_engine, fsdp


def deepspeed_half_precision(accelerator) -> bool:
    """DeepSpeed whose engine computes in fp16/bf16 (the module's parameters are then not the masters)."""
    return deepspeed_engine.active(accelerator) and accelerator.mixed_precision in ("fp16", "bf16")


def deepspeed_fp32_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """The unwrapped module's state dict with every trainable parameter replaced by its float32 master
    (CPU tensors). A collective (one all-reduce per trainable parameter); every process gets the result."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        master = safe_get_full_fp32_param(param)
        if master is None:
            raise RuntimeError(f"DeepSpeed holds no float32 master for trainable parameter {name}")
        state[name] = master.detach().cpu()
    return state


def gather(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict with full-precision trainable weights when the prepared ``model`` does not
    hold it (FSDP shards, DeepSpeed half-precision copies): on the main process at least. ``None``
    otherwise (DDP, one process, DeepSpeed in float32): the module's own parameters are the weights."""
    if fsdp.active(accelerator):
        return fsdp.full_state_dict(accelerator, model)
    if deepspeed_half_precision(accelerator):
        return deepspeed_fp32_state_dict(accelerator, model)
    return None


def component_state_dict(full: dict, name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}


def save_component(component, folder: str, state_dict: dict) -> None:
    """``component.save_pretrained(folder)`` writing ``state_dict`` (from ``gather``) instead of the component's
    own parameters (shards or half-precision copies): its ``state_dict`` method is shadowed for the call."""
    expected = set(component.state_dict().keys())
    if set(state_dict) != expected:
        raise KeyError(
            f"gathered state dict does not match {type(component).__name__}: {sorted(expected ^ set(state_dict))[:5]}"
        )
    component.state_dict = lambda *args, **kwargs: dict(state_dict)
    try:
        component.save_pretrained(folder)
    finally:
        del component.state_dict


def materialize(model, full: dict) -> None:
    """Main process, after training: replace every parameter of ``model`` (FSDP shard, DeepSpeed half-precision
    copy) with its tensor from ``full`` (``gather``), so ``save_pretrained``, dtype casts and inference see the
    whole float32 weights. The prepared model (FSDP unit, DeepSpeed engine) must not run again afterwards."""
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            key = f"{module_name}.{name}" if module_name else name
            module._parameters[name] = torch.nn.Parameter(full[key].to(param.device), requires_grad=param.requires_grad)
