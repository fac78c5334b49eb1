"""Atomic, rotating training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into ``checkpoint-N.partial/`` and renamed to ``checkpoint-N/`` only after a
completion marker (``checkpoint_complete.json``) is in it, so a crash mid-write never produces a
folder that ``latest`` would pick. Inside: accelerate's optimizer / scheduler / RNG / EMA files, each
trainable component written with ``save_pretrained`` by the save hook (``controlnet/``, ``attnx/``,
``text_embedding/``, and ``unet/`` when parts of it train), and ``training_state.json`` (step, epoch,
position in the epoch, fault counters) for an exact resume.

Under DeepSpeed, accelerate writes the engine's own files instead of ``optimizer.bin``: ``pytorch_model/``
(the module state and one ZeRO optimizer shard per process), ``latest`` and DeepSpeed's ``zero_to_fp32.py``.
The frozen parameters (the UNet's, unless they train) are left out of the module state
(``exclude_frozen_parameters``): they never change and would otherwise be written into every checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field

from . import distributed, lora
from .distributed import any_process, deepspeed_active

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
MARKER = "checkpoint_complete.json"
STATE_FILE = "training_state.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
_warned: set = set()


@dataclass
class TrainingState:
    """Where training stands; saved in every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of ``epoch`` already consumed (this process)
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    samples_seen: int = 0
    trainable: dict = field(default_factory=dict)  # component -> trainable parameter tensors (resume check)

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, folder: str) -> TrainingState:
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} missing: {folder} is not a checkpoint of this trainer")
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first; folders without the marker are ignored."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _NAME.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path):
            if is_complete(path):
                found.append((int(m.group(1)), path))
            elif path not in _warned:
                _warned.add(path)
                logger.warning("ignoring %s: no %s (an interrupted or foreign write)", path, MARKER)
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """``latest`` -> newest complete checkpoint of ``output_dir`` (None, with a message, if there is none);
    a path -> that checkpoint, which must be complete."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            logger.warning("--resume_from_checkpoint latest: no complete checkpoint in %s; starting fresh", output_dir)
        return path
    path = resume_from_checkpoint
    if not os.path.isdir(path) and os.path.isdir(os.path.join(output_dir, path)):
        path = os.path.join(output_dir, path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such folder")
    if not is_complete(path):
        raise ValueError(f"--resume_from_checkpoint {path}: no {MARKER}; the checkpoint was not completely written")
    return path


def rotate(output_dir: str, keep: int | None) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``keep`` (main process only); returns the removed paths."""
    if not keep or keep <= 0:
        return []
    found = list_checkpoints(output_dir)
    removed = []
    for _, path in found[: max(0, len(found) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("removed old checkpoints: %s", ", ".join(os.path.basename(p) for p in removed))
    return removed


def remove_partials(output_dir: str) -> None:
    """Leftovers of interrupted writes (main process, at start)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(PREFIX) and name.endswith(PARTIAL_SUFFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def save_state_kwargs(accelerator) -> dict:
    """Extra ``accelerator.save_state`` arguments: DeepSpeed's engine leaves the frozen parameters out."""
    return dict(exclude_frozen_parameters=True) if deepspeed_active(accelerator) else {}


def load_state_kwargs(accelerator) -> dict:
    """Extra ``accelerator.load_state`` arguments: the engine's module state lacks the frozen parameters
    (see ``save_state_kwargs``), so DeepSpeed must not load it strictly. The trainable components are
    loaded strictly anyway, from their own folders, by the load hook."""
    return dict(load_module_strict=False) if deepspeed_active(accelerator) else {}


def save_checkpoint(accelerator, output_dir: str, state: TrainingState, total_limit: int | None) -> str:
    """Write ``checkpoint-{global_step}`` atomically, then rotate. Every process must call it.

    On failure the partial folder is removed and the error re-raised; earlier checkpoints are untouched.
    Several processes agree on the outcome first (a collective): all raise together, so none goes on alone
    to wait in a collective the others never reach, and a checkpoint that failed on any process is not
    marked complete.
    """
    final = os.path.join(output_dir, f"{PREFIX}{state.global_step}")
    partial = final + PARTIAL_SUFFIX
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(partial, **save_state_kwargs(accelerator))
        if accelerator.is_main_process:
            state.save(partial)
            with open(os.path.join(partial, MARKER), "w", encoding="utf-8") as f:
                json.dump({"global_step": state.global_step, "time": time.time()}, f)
    except Exception as err:  # noqa: BLE001 - agreed on below, then re-raised
        error = err
    except BaseException:  # KeyboardInterrupt and the like: no agreement, just leave no partial folder
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if any_process(accelerator, error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise error or RuntimeError(f"checkpoint {final} failed on another process (see its log)")
    if accelerator.is_main_process:
        if os.path.isdir(final):  # the same step saved again (e.g. a signal right after a save)
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rotate(output_dir, total_limit)
    return final


def register_hooks(accelerator, saved: list[str]) -> None:
    """accelerate's save_state/load_state write and read each trainable component named in ``saved`` with
    save_pretrained (diffusers' train_controlnet.py pattern) instead of one opaque state dict.

    Under FSDP accelerate saves and loads the sharded model itself (the load hook then gets no models); the
    save hook still writes the components, from the gathered full state dict."""

    def save_hook(models, weights, output_dir):
        for model in models:
            full = distributed.gather(accelerator, model)  # collective; None when the module holds them
            if not accelerator.is_main_process:
                continue
            for name in saved:
                component = getattr(accelerator.unwrap_model(model), name)
                gathered = None if full is None else distributed.component_state_dict(full, name)
                if lora.has_adapter(component):  # adapter + fully trained parameters only (small)
                    folder = os.path.join(output_dir, f"{name}_lora")
                    lora.save_adapter(component, folder, with_trained_base=True, state_dict=gathered)
                elif gathered is not None:
                    distributed.save_component(component, os.path.join(output_dir, name), gathered)
                else:
                    component.save_pretrained(os.path.join(output_dir, name))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            for name in saved:
                component = getattr(model, name)
                if lora.has_adapter(component):
                    lora.load_adapter(component, os.path.join(input_dir, f"{name}_lora"))
                    continue
                folder = os.path.join(input_dir, name)
                if not os.path.isdir(folder):
                    raise FileNotFoundError(
                        f"{input_dir} has no {name}/ (was it written with other trainable switches?)"
                    )
                loaded = type(component).from_pretrained(input_dir, subfolder=name)
                component.load_state_dict(loaded.state_dict())
                del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
