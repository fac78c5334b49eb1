"""Atomic, rotating training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into ``checkpoint-N.partial/`` and renamed to ``checkpoint-N/`` only after a
completion marker (``checkpoint_complete.json``, listing every file's size and sha256) is in it, so a crash
mid-write never produces a folder that ``latest`` would pick, and a file damaged later is found (``verify``)
and named instead of failing deep inside ``torch.load``. Inside: accelerate's optimizer / scheduler / RNG / EMA
files, each trainable component written with ``save_pretrained`` by the save hook (``controlnet/``, ``attnx/``,
``text_embedding/``, and ``unet/`` when parts of it train), and ``training_state.json`` (step, epoch,
position in the epoch, fault counters) for an exact resume, and the run's ``training_config.yaml`` (compared
on resume by ``resume_check``).

Under DeepSpeed, accelerate writes the engine's own files instead of ``optimizer.bin``: ``pytorch_model/``
(the module state and one ZeRO optimizer shard per process), ``latest`` and DeepSpeed's ``zero_to_fp32.py``.
The frozen parameters (the UNet's, unless they train) are left out of the module state
(``exclude_frozen_parameters``): they never change and would otherwise be written into every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field

from . import distributed, lora
from .distributed import any_process, deepspeed_active

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
ASIDE_SUFFIX = ".old"  # the previous save of the same step, during the swap
MARKER = "checkpoint_complete.json"
STATE_FILE = "training_state.json"
CONFIG_FILE = "training_config.yaml"  # the resolved configuration the checkpoint was trained with
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
    num_processes: int = 0  # batches_in_epoch counts this many processes' batches (0: not recorded)

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


class CheckpointDamaged(RuntimeError):
    """A checkpoint whose files do not match its completion marker or cannot be read; names the files."""


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_table(folder: str) -> dict:
    """``relative path -> {size, sha256}`` of every file under ``folder`` but the marker (written into it)."""
    table = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel != MARKER:
                table[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    return dict(sorted(table.items()))


def _read_marker(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError) as err:
        return {"unreadable": f"{MARKER}: {err}"}
    return marker if isinstance(marker, dict) else {"unreadable": f"{MARKER}: not a JSON object"}


def verify(folder: str, hashes: bool = True) -> list[str]:
    """Problems of ``folder`` against the file table in its completion marker (empty: intact). Sizes only
    is a few ``stat`` calls; hashes read every file. Markers written before the table can only be checked by
    loading (``find_damaged``)."""
    marker = _read_marker(folder)
    if "unreadable" in marker:
        return [marker["unreadable"]]
    problems = []
    for rel, expected in marker.get("files", {}).items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel}: missing")
            continue
        size = os.path.getsize(path)
        if size != expected["size"]:
            problems.append(f"{rel}: {size} bytes, {expected['size']} when written (truncated or overwritten)")
        elif hashes and _sha256(path) != expected["sha256"]:
            problems.append(f"{rel}: sha256 differs from the one recorded when it was written (corrupted)")
    return problems


def _probe(path: str) -> str | None:
    """Why ``path`` cannot be read, from its structure alone (torch zip archives, safetensors, JSON)."""
    try:
        if path.endswith((".bin", ".pt", ".pth")):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return f"bad data in archive member {bad}" if bad else None
        if path.endswith(".safetensors"):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n <= 0 or n > size - 8:
                    return "bad safetensors header length"
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            return None if 8 + n + end == size else f"{size} bytes, its header describes {8 + n + end}"
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                json.load(f)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        return f"{type(err).__name__}: {err}"
    return None


def find_damaged(folder: str) -> list[str]:
    """The files of a checkpoint that failed to load, with reasons: the marker's table first, then the
    structure of each file (torch's archives carry CRCs, safetensors' headers give the expected size)."""
    problems = verify(folder, hashes=True)
    if problems:
        return problems
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            reason = _probe(os.path.join(root, name))
            if reason:
                problems.append(f"{os.path.relpath(os.path.join(root, name), folder)}: {reason}")
    return problems


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


def _intact(path: str, hashes: bool) -> bool:
    problems = verify(path, hashes=hashes)
    if problems:
        logger.warning("skipping damaged %s: %s", path, "; ".join(problems))
    return not problems


def latest_checkpoint(output_dir: str, hashes: bool = False) -> str | None:
    """Newest complete checkpoint whose files match its marker (sizes; also hashes with ``hashes``); a
    damaged one is skipped with a warning."""
    for _, path in reversed(list_checkpoints(output_dir)):
        if _intact(path, hashes):
            return path
    return None


def previous_checkpoint(output_dir: str, path: str) -> str | None:
    """The newest intact checkpoint older than ``path`` (the fallback offered for a damaged one)."""
    named = _NAME.match(os.path.basename(os.path.normpath(path)))
    if named is None:  # a folder outside the checkpoint-N naming: no order to fall back along
        return None
    step = int(named.group(1))
    for s, candidate in reversed(list_checkpoints(output_dir)):
        if s < step and _intact(candidate, hashes=True):
            return candidate
    return None


def _damaged(path: str, problems: list[str], output_dir: str, fallback: bool) -> str:
    """Raise ``CheckpointDamaged`` naming the files and offering the previous checkpoint, or (``fallback``)
    return that previous checkpoint."""
    previous = previous_checkpoint(output_dir, path)
    what = f"{path} is damaged: {'; '.join(problems) or 'it failed to load (see the error above)'}"
    if fallback and previous:
        logger.warning("%s; resuming from the previous complete checkpoint %s", what, previous)
        return previous
    if previous:
        offer = (
            f"resume from the previous complete checkpoint with --resume_from_checkpoint {previous}, "
            "or add --fallback_to_previous_checkpoint"
        )
    else:
        offer = "there is no earlier complete checkpoint to fall back to"
    raise CheckpointDamaged(f"{what}; {offer}")


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None, fallback: bool = False) -> str | None:
    """``latest`` -> newest intact checkpoint of ``output_dir`` (damaged ones skipped with a warning; None,
    with a message, if there is none); a path -> that checkpoint, which must be complete and intact (else
    ``CheckpointDamaged`` offering the previous one, which ``fallback`` takes instead)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir, hashes=True)
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
    problems = verify(path, hashes=True)
    return _damaged(path, problems, output_dir, fallback) if problems else path


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


def recover_partials(output_dir: str) -> None:
    """Settle what interrupted writes left (main process, at start, under the output lock).

    ``checkpoint-N.partial`` with an intact marker was fully written and only its rename was cut off: it is
    promoted to ``checkpoint-N`` (or dropped if that exists). One without a marker is an interrupted write
    and is removed. ``checkpoint-N.old`` is the previous save of the same step moved aside during a swap:
    removed once ``checkpoint-N`` exists, else moved back."""
    if not os.path.isdir(output_dir):
        return
    names = sorted(os.listdir(output_dir))
    for name in names:
        path = os.path.join(output_dir, name)
        if not (name.startswith(PREFIX) and name.endswith(PARTIAL_SUFFIX)):
            continue
        final = path[: -len(PARTIAL_SUFFIX)]
        if is_complete(path) and not verify(path, hashes=False) and not os.path.isdir(final):
            os.replace(path, final)
            logger.warning("promoted %s to %s: it was complete, only its rename had been interrupted", name, final)
        else:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed %s: an interrupted checkpoint write", name)
    for name in names:
        path = os.path.join(output_dir, name)
        if not (name.startswith(PREFIX) and name.endswith(ASIDE_SUFFIX)):
            continue
        final = path[: -len(ASIDE_SUFFIX)]
        if os.path.isdir(final) or not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.replace(path, final)
            logger.warning("restored %s: a swap with a new save of the same step had been interrupted", final)


def save_state_kwargs(accelerator) -> dict:
    """Extra ``accelerator.save_state`` arguments: DeepSpeed's engine leaves the frozen parameters out."""
    return dict(exclude_frozen_parameters=True) if deepspeed_active(accelerator) else {}


def load_state_kwargs(accelerator) -> dict:
    """Extra ``accelerator.load_state`` arguments: the engine's module state lacks the frozen parameters
    (see ``save_state_kwargs``), so DeepSpeed must not load it strictly. The trainable components are
    loaded strictly anyway, from their own folders, by the load hook."""
    return dict(load_module_strict=False) if deepspeed_active(accelerator) else {}


def save_checkpoint(accelerator, output_dir: str, state: TrainingState, total_limit: int | None, config=None) -> str:
    """Write ``checkpoint-{global_step}`` atomically, then rotate. Every process must call it.

    The completion marker lists every file with its size and sha256, written after all processes have
    written theirs; ``config`` (the resolved ``TrainingConfig``) is saved as ``training_config.yaml`` so a
    resume can compare it. On failure the partial folder is removed and the error re-raised; earlier
    checkpoints are untouched. Several processes agree on the outcome first (a collective): all raise
    together, so none goes on alone to wait in a collective the others never reach, and a checkpoint that
    failed on any process is not marked complete. A save of a step that already has a checkpoint moves the
    old folder aside before the rename, so a kill at any moment leaves one complete copy (``recover_partials``).
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
    except Exception as err:  # noqa: BLE001 - agreed on below, then re-raised
        error = err
    except BaseException:  # KeyboardInterrupt and the like: no agreement, just leave no partial folder
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()  # every process's files are written before the marker lists them
    if error is None and accelerator.is_main_process:
        try:
            state.save(partial)
            if config is not None:
                config.save(os.path.join(partial, CONFIG_FILE))
            marker = {"global_step": state.global_step, "time": time.time(), "files": file_table(partial)}
            with open(os.path.join(partial, MARKER), "w", encoding="utf-8") as f:
                json.dump(marker, f, indent=1)
        except Exception as err:  # noqa: BLE001 - agreed on below, then re-raised
            error = err
    if any_process(accelerator, error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise error or RuntimeError(f"checkpoint {final} failed on another process (see its log)")
    if accelerator.is_main_process:
        _swap_in(partial, final)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rotate(output_dir, total_limit)
    return final


def _swap_in(partial: str, final: str) -> None:
    """``partial`` becomes ``final``; an existing ``final`` (the same step saved again, e.g. a signal right
    after a scheduled save) is moved aside first and deleted last."""
    if not os.path.isdir(final):
        os.replace(partial, final)
        return
    aside = final + ASIDE_SUFFIX
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    os.replace(partial, final)
    shutil.rmtree(aside, ignore_errors=True)


def load_checkpoint(accelerator, path: str, output_dir: str, fallback: bool = False) -> str:
    """``accelerator.load_state(path)``; when it fails on any process, the damaged files are named and the
    previous complete checkpoint offered (``CheckpointDamaged``) or, with ``fallback``, loaded instead.
    Returns the checkpoint actually loaded."""
    while True:
        error = None
        try:
            accelerator.load_state(path, **load_state_kwargs(accelerator))
        except Exception as err:  # noqa: BLE001 - agreed on below, then named
            error = err
        if not any_process(accelerator, error is not None):
            return path
        if error is not None:
            logger.error("loading %s failed: %s: %s", path, type(error).__name__, error)
        try:
            path = _damaged(path, find_damaged(path), output_dir, fallback)
        except CheckpointDamaged as damaged:
            raise damaged from error


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
                    with distributed.state_dict_from(component, gathered):
                        lora.save_adapter(component, folder, with_trained_base=True)
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
