"""FSDP2 (``torch.distributed.fsdp.fully_shard``) through accelerate: what the loop needs beyond DDP.

Supported set-up: ``fsdp_version: 2`` with ``fsdp_auto_wrap_policy: NO_WRAP`` (``configs/accelerate/fsdp_8.yaml``):
``AnyText2TrainingModel`` is one FSDP unit. Its forward pre-hook all-gathers every parameter of the unit
(WriteNet, AttnX, text embedding, UNet), so AttnX's layers, which the UNet calls from forward hooks and never
through ``attnx.forward``, are whole when used; FSDP2 shards per parameter, so frozen and trainable parameters
in one module need nothing special. Between steps parameters, gradients and AdamW state are sharded.

What differs from DDP, all handled here:

* CPU processes: accelerate 1.15 switches to FSDP only for GPU-like process types (``AcceleratorState``:
  the switch sits under ``distributed_type in [MULTI_GPU, ...]``); with ``cpu=True`` it forms a MULTI_CPU
  gloo group and drops the FSDP plugin, i.e. silently trains with DDP. ``enable_on_cpu_processes`` puts FSDP
  back with the launch config's plugin (FSDP2 runs on CPU over gloo).
* Parameters become ``DTensor`` shards in ``prepare``: the loop re-reads the trainable parameters afterwards
  (gradient clipping), and the checkpoint hook writes each component from the gathered full state dict
  (``accelerator.get_state_dict``, a collective; the fp32 masters, not the unsharded compute copies).
* Validation runs on the main process: every process unshards the unit first (``unsharded``), so the main
  process's forward finds the parameters gathered and issues no collective.
* The final folder: the main process swaps the gathered full tensors in for the shards
  (``full_weights.materialize``) and then writes the pipeline as usual.

Not supported (refused in ``check_supported``): FSDP1, auto-wrap policies (a nested unit would all-gather in
the main-process-only validation and deadlock), ``--use_ema`` and LoRA (untested with sharded parameters).
Checkpoints are accelerate's sharded model/optimizer files plus the usual component folders; resume reads the
former, so DDP and FSDP checkpoints are not interchangeable (the final folder is the same).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)


def _requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_on_cpu_processes(accelerator) -> None:
    """A FSDP launch on CPU processes: accelerate formed a MULTI_CPU (DDP) gloo group and dropped the plugin;
    switch the state to FSDP with the plugin the launch config describes (``FSDP_*`` environment)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or not _requested():
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    from accelerate.state import PartialState

    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # As AcceleratorState does after its own switch: every later AcceleratorState() re-reads PartialState's.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP on %d CPU processes (gloo)", accelerator.num_processes)


def active(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_supported(accelerator, config) -> None:
    """Refuse the FSDP set-ups this trainer does not handle (see the module docstring)."""
    if not active(accelerator):
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


def full_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the main process (CPU tensors, the fp32 masters of trainable weights),
    ``{}`` on the others. A collective: every process must call it."""
    return accelerator.get_state_dict(model, unwrap=False)


@contextlib.contextmanager
def unsharded(accelerator, model, enabled: bool = True):
    """All processes all-gather the unit's parameters (``FSDPModule.unshard``) for the body, then reshard.
    Without FSDP (or not ``enabled``): nothing."""
    if not enabled or not active(accelerator):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
