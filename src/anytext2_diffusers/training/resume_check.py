"""Resuming with another configuration: what may change mid-run, what may not.

A checkpoint stores the resolved configuration it was trained with (``training_config.yaml``) and the
number of processes (``training_state.json``). At the start of a resumed run, after the checkpoint is
located and the components loaded, ``check_resume`` compares them with the new configuration:

* options that shape the run (batch size, accumulation, resolution, data, seed, trainable set, precision,
  the model, the losses, the optimizer's hyper-parameters ...) must be equal: a difference stops the start
  with the list of differences. Unlisted options count as such, so a new option is safe by default;
* the schedule of the run (``CHANGEABLE``: steps, logging, validation, checkpoint cadence, speed switches)
  may change: applied and logged;
* the learning rate (``LEARNING_RATE``) changes only with ``--reset_lr_scheduler``; without it the restored
  scheduler would silently keep the old rate. With it, ``reset_lr_schedule`` puts the new base rate into the
  restored scheduler at its current position.

The run then saves the new configuration as ``output_dir/training_config.yaml`` (and into its next
checkpoints), so the saved configuration always states what the run does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import yaml

from .checkpointing import CONFIG_FILE, TrainingState

logger = logging.getLogger(__name__)

CHANGEABLE = frozenset(
    {
        "max_train_steps",
        "num_train_epochs",
        "max_nonfinite_steps",
        "checkpointing_steps",
        "checkpointing_epochs",
        "checkpoints_total_limit",
        "logging_steps",
        "report_to",
        "logging_dir",
        "tracker_project_name",
        "validation_data",
        "validation_steps",
        "num_validation_images",
        "max_validation_batches",
        "validation_num_inference_steps",
        "validation_guidance_scale",
        "merge_lora_at_end",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
        "cache_dir",
        "dataloader_num_workers",
        "gradient_checkpointing",
        "channels_last",
        "cache_latents",
        "cache_ocr_necks",
        "allow_tf32",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
    }
)
LEARNING_RATE = frozenset({"learning_rate", "scale_lr", "lr_scheduler", "lr_warmup_steps"})
# Where the run is written or how it starts; never compared (the Hub token is never read back or printed).
NOT_COMPARED = frozenset(
    {"output_dir", "resume_from_checkpoint", "reset_lr_scheduler", "fallback_to_previous_checkpoint", "hub_token"}
)


class ResumeRefused(ValueError):
    """The new configuration changes options that cannot change in the middle of a run."""


@dataclass
class Difference:
    name: str
    saved: object
    new: object

    def __str__(self) -> str:
        return f"{self.name}: {self.saved!r} -> {self.new!r}"


@dataclass
class ResumePlan:
    refused: list[Difference] = field(default_factory=list)  # run-defining options that differ
    applied: list[Difference] = field(default_factory=list)  # changeable options that differ
    learning_rate: list[Difference] = field(default_factory=list)  # differ; applied with --reset_lr_scheduler


def compare(saved: dict, new: dict, reset_lr_scheduler: bool = False) -> ResumePlan:
    """Sort the differences between two ``TrainingConfig.to_dict()``s. A learning-rate difference is refused
    unless ``reset_lr_scheduler``; an option the checkpoint does not know (saved by an older version) is
    taken from the new configuration."""
    plan = ResumePlan()
    for name in sorted(new):
        if name in NOT_COMPARED or name not in saved or saved[name] == new[name]:
            continue
        diff = Difference(name, saved[name], new[name])
        if name in CHANGEABLE:
            plan.applied.append(diff)
        elif name in LEARNING_RATE:
            (plan.learning_rate if reset_lr_scheduler else plan.refused).append(diff)
        else:
            plan.refused.append(diff)
    return plan


def check_resume(checkpoint: str, config, num_processes: int) -> ResumePlan:
    """Compare ``checkpoint``'s configuration and process count with this run's; raise ``ResumeRefused``
    listing the differences that cannot change, log the ones applied. Checkpoints written before the
    configuration was saved in them are resumed with a warning (nothing to compare)."""
    path = os.path.join(checkpoint, CONFIG_FILE)
    if not os.path.isfile(path):
        logger.warning("%s has no %s (an older checkpoint): the configuration is not compared", checkpoint, CONFIG_FILE)
        return ResumePlan()
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    if not isinstance(saved, dict):
        raise ResumeRefused(f"{path}: expected a mapping of option names to values")
    plan = compare(saved, config.to_dict(), config.reset_lr_scheduler)
    processes = TrainingState.load(checkpoint).num_processes
    if processes and processes != num_processes:  # the saved position counts batches per process
        plan.refused.append(Difference("number of processes", processes, num_processes))
    if plan.refused:
        hint = ""
        if any(d.name in LEARNING_RATE for d in plan.refused):
            hint = " A new learning rate needs --reset_lr_scheduler (it restarts the schedule's base rate)."
        raise ResumeRefused(
            f"cannot resume {checkpoint} with these changes:\n  "
            + "\n  ".join(map(str, plan.refused))
            + f"\nThey define the run (its data order, batches, model or optimizer): resume with the values in {path}"
            + f", or start a new run in another --output_dir.{hint}"
        )
    for diff in plan.applied:
        logger.info("resume: %s (applied)", diff)
    for diff in plan.learning_rate:
        logger.info("resume: %s (--reset_lr_scheduler)", diff)
    if config.reset_lr_scheduler and not plan.learning_rate:
        logger.info("resume: --reset_lr_scheduler with an unchanged learning rate and schedule: nothing to reset")
    return plan


def reset_lr_schedule(lr_scheduler, base_lr: float) -> list[float]:
    """Give a restored ``diffusers.optimization`` schedule (a ``LambdaLR``, possibly wrapped by accelerate)
    the new base rate at its current position: the schedule's shape is this run's options, its step the
    checkpoint's. Returns the learning rates now in force."""
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)
    inner.base_lrs = [base_lr for _ in inner.base_lrs]
    rates = [base * factor(inner.last_epoch) for base, factor in zip(inner.base_lrs, inner.lr_lambdas)]
    for group, rate in zip(inner.optimizer.param_groups, rates):
        group["initial_lr"] = base_lr
        group["lr"] = rate
    inner._last_lr = list(rates)
    return rates
