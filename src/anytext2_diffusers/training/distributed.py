"""Everything the training loop does differently from plain DDP, in one place.

* Process placement: several CPU processes need ``cpu=True`` (a gloo group), DeepSpeed on CPU names gloo.
* Agreement: ``any_process`` (a flag raised on one process holds on all: skip a step, stop, fail a save).
* DeepSpeed (``accelerate launch`` with ``configs/accelerate/deepspeed_zero2.yaml``): the engine casts the
  module to fp16/bf16 and steps inside ``accelerator.backward``; ``autocast``, ``set_clipping`` and
  ``frozen_step`` make the loop's flags mean what they mean under DDP.
* FSDP2 (``fsdp_version: 2``, ``fsdp_auto_wrap_policy: NO_WRAP``, ``configs/accelerate/fsdp_8.yaml``):
  ``AnyText2TrainingModel`` is one FSDP unit whose forward pre-hook all-gathers every parameter (WriteNet,
  AttnX, text embedding, UNet), so AttnX's layers, which the UNet calls from hooks, are whole when used.
  accelerate 1.15 drops the FSDP plugin on CPU processes (``enable_fsdp_on_cpu_processes`` puts it back);
  validation on the main process needs every process to unshard first (``unsharded``).
* Full weights (``gather`` / ``state_dict_from`` / ``save_component`` / ``materialize``): the component
  folders of checkpoints and the final folder hold whole float32 weights even where the prepared model holds
  FSDP shards or DeepSpeed's half-precision copies.

Not supported under FSDP (refused in ``check_fsdp_supported``): FSDP1, auto-wrap policies (a nested unit
would all-gather in the main-process-only validation and deadlock), ``--use_ema`` and LoRA (untested with
sharded parameters). FSDP checkpoints hold accelerate's sharded files, so DDP and FSDP checkpoints are not
interchangeable (the final folder is the same). See docs/scaling.md for what each piece fixed.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from accelerate.utils import DistributedType, InitProcessGroupKwargs

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- processes


def _cpu_processes() -> bool:
    """Launched as several processes (torchrun / ``accelerate launch --multi_gpu``) on a machine without
    CUDA: Accelerator must be told ``cpu=True`` to form a gloo process group, else every process would
    silently train alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerator_placement() -> dict:
    """``Accelerator`` arguments for where the processes run. Several CPU processes get ``cpu=True`` (a
    gloo group, see ``_cpu_processes``), except under DeepSpeed (``ACCELERATE_USE_DEEPSPEED``, set by
    ``accelerate launch`` with a DeepSpeed config): accelerate ignores DeepSpeed when ``cpu=True`` and would
    silently run DDP, and with neither flag nor backend it counts 1 process per rank. So DeepSpeed on CPU
    processes keeps ``cpu=False`` and names the gloo backend, which accelerate hands to
    ``deepspeed.comm.init_distributed`` (DeepSpeed's CPU accelerator, auto-detected without CUDA)."""
    if not _cpu_processes():
        return {}
    if deepspeed_requested():
        return dict(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return dict(cpu=True)


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective when there are several: every process calls it).
    An accelerator without ``num_processes`` (a test double) counts as one process."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        return bool(flag)
    value = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(value, reduction="sum").item() > 0


# ---------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_requested() -> bool:
    """``accelerate launch`` was given a DeepSpeed config (before the ``Accelerator`` exists)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def skip_deepspeed_import_unless_requested() -> None:
    """accelerate's ``unwrap_model`` imports deepspeed whenever it is installed, only to test ``isinstance``
    against its engine; the import costs seconds and prints DeepSpeed's accelerator warning on every run.
    Without a DeepSpeed launch no model can be a DeepSpeed engine, so accelerate is told it is absent."""
    if deepspeed_requested():
        return
    import accelerate.utils.other

    accelerate.utils.other.is_deepspeed_available = lambda: False


def deepspeed_active(accelerator) -> bool:
    """The prepared run uses DeepSpeed (an accelerator without ``state``, e.g. a test double: no)."""
    return getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None) is not None


def autocast(accelerator, dtype: torch.dtype):
    """The forward's autocast. accelerate's (``accelerator.autocast``, and the one ``prepare`` wraps around
    a DDP model's forward) is off under DeepSpeed, whose fp16/bf16 engine casts the module's parameters
    to half precision instead; DeepSpeed's own input cast (fp16 ``auto_cast``) reaches tensors, lists and
    dicts, not a ``Batch``, and the step makes float32 tensors of its own (noise, glyphs, positions). So
    under DeepSpeed the forward runs in ``torch.autocast`` of the engine's dtype."""
    if not deepspeed_active(accelerator) or dtype == torch.float32:
        return accelerator.autocast()
    return torch.autocast(accelerator.device.type, dtype=dtype)


def set_clipping(accelerator, max_grad_norm: float | None) -> None:
    """Under DeepSpeed the engine clips, inside ``accelerator.backward`` (its step), and the loop's
    ``clip_grad_norm_`` only returns the norm the engine measured. accelerate fills an absent or ``auto``
    ``gradient_clipping`` with 1.0; it is set to ``--max_grad_norm`` instead (0 = off, the reference), so the
    flag means the same under DDP and DeepSpeed. A number in the DeepSpeed config is kept."""
    if not deepspeed_active(accelerator):
        return
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
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
    if not freeze or not deepspeed_active(accelerator):
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


# ---------------------------------------------------------------------------------------- FSDP


def _fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_active(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def enable_fsdp_on_cpu_processes(accelerator) -> None:
    """A FSDP launch on CPU processes: accelerate 1.15 switches to FSDP only for GPU-like process types
    (``AcceleratorState``), so with ``cpu=True`` it formed a MULTI_CPU (DDP) gloo group and dropped the
    plugin. Switch the state to FSDP with the plugin the launch config describes (``FSDP_*`` environment);
    FSDP2 runs on CPU over gloo."""
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or not _fsdp_requested():
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # As AcceleratorState does after its own switch: every later AcceleratorState() re-reads PartialState's.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP on %d CPU processes (gloo)", accelerator.num_processes)


def check_fsdp_supported(accelerator, config) -> None:
    """Refuse the FSDP set-ups this trainer does not handle (see the module docstring)."""
    if not fsdp_active(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    problems = []
    if plugin.fsdp_version != 2:
        problems.append("fsdp_version 1 (use fsdp_version: 2)")
    if plugin.auto_wrap_policy is not None:
        problems.append(
            "an auto-wrap policy (use fsdp_auto_wrap_policy: NO_WRAP: validation runs on the main process only, "
            "and a nested FSDP unit would all-gather there alone)"
        )
    if plugin.cpu_ram_efficient_loading:
        problems.append("fsdp_cpu_ram_efficient_loading (every process builds the model; use false)")
    if config.use_ema:
        problems.append("--use_ema")
    if config.lora_rank:
        problems.append("--lora_rank")
    if problems:
        raise ValueError(
            "FSDP: not supported with " + "; ".join(problems) + ". See docs/scaling.md (FSDP) and "
            "configs/accelerate/fsdp_8.yaml."
        )


@contextlib.contextmanager
def unsharded(accelerator, model, enabled: bool = True):
    """All processes all-gather the unit's parameters (``FSDPModule.unshard``) for the body, then reshard.
    Without FSDP (or not ``enabled``): nothing."""
    if not enabled or not fsdp_active(accelerator):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


# ---------------------------------------------------------------------------------------- full weights


def _deepspeed_half_precision(accelerator) -> bool:
    """DeepSpeed whose engine computes in fp16/bf16 (the module's parameters are then not the masters)."""
    return deepspeed_active(accelerator) and accelerator.mixed_precision in ("fp16", "bf16")


def _deepspeed_fp32_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """The unwrapped module's state dict with every trainable parameter replaced by its float32 master
    (CPU tensors), assembled from ZeRO's partitions (``safe_get_full_fp32_param``). A collective (one
    all-reduce per trainable parameter); every process gets the result."""
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
    hold it (FSDP shards: ``accelerator.get_state_dict``, the fp32 masters on the main process; DeepSpeed
    half-precision copies: the masters, on every process). ``None`` otherwise (DDP, one process, DeepSpeed in
    float32): the module's own parameters are the weights. A collective: every process calls it, in order."""
    if fsdp_active(accelerator):
        return accelerator.get_state_dict(model, unwrap=False)
    if _deepspeed_half_precision(accelerator):
        return _deepspeed_fp32_state_dict(accelerator, model)
    return None


def component_state_dict(full: dict, name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}


@contextlib.contextmanager
def state_dict_from(component, state_dict: dict | None):
    """While open, ``component.state_dict()`` returns ``state_dict`` (from ``gather``) instead of the component's
    own parameters (shards or half-precision copies), so writers that read it (``save_pretrained``, diffusers'
    ``save_lora_adapter``) write the full float32 weights. ``None``: the component's own weights."""
    if state_dict is None:
        yield
        return
    expected = set(component.state_dict().keys())
    if set(state_dict) != expected:
        raise KeyError(
            f"gathered state dict does not match {type(component).__name__}: {sorted(expected ^ set(state_dict))[:5]}"
        )
    component.state_dict = lambda *args, **kwargs: dict(state_dict)
    try:
        yield
    finally:
        del component.state_dict


def save_component(component, folder: str, state_dict: dict) -> None:
    """``component.save_pretrained(folder)`` writing ``state_dict`` (from ``gather``)."""
    with state_dict_from(component, state_dict):
        component.save_pretrained(folder)


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
