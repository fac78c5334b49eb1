"""The final output folder: a complete ``AnyText2Pipeline`` (``from_pretrained(output_dir)`` loads it), in
float32, with the reference's DDIM sampler on the training betas (``AnyText2Pipeline.from_parts``)."""

from __future__ import annotations

import errno
import logging
import os
import shutil

import torch

from ..pipelines import AnyText2Pipeline
from ..utils.dtype import cast_model

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
STAGING = ".pipeline.partial"  # the new final folder while it is written
ASIDE = ".pipeline.old"  # what it replaces, while the new one is moved in


class FinalSaveError(RuntimeError):
    """The final pipeline folder could not be written; what was in ``output_dir`` before is kept."""


def _bytes_to_write(components: dict) -> int:
    """About what the components take on disk: their tensors' bytes (configs and tokenizer files are small)."""
    total = 0
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.state_dict().values())
    return total


def _swap_in(staging: str, output_dir: str, stale=()) -> None:
    """Move the staged components into ``output_dir``: ``model_index.json`` goes first (the folder stops being
    a loadable pipeline) and comes back last; replaced folders, and the ``stale`` entries the new folder must
    not keep, wait in ``ASIDE`` until the end."""
    index = os.path.join(output_dir, MODEL_INDEX)
    aside = os.path.join(output_dir, ASIDE)
    os.makedirs(aside, exist_ok=True)
    if os.path.exists(index):
        os.replace(index, os.path.join(aside, MODEL_INDEX))
    staged = set(os.listdir(staging))
    for name in stale:
        if name not in staged and os.path.exists(os.path.join(output_dir, name)):
            os.replace(os.path.join(output_dir, name), os.path.join(aside, name))
    for name in sorted(os.listdir(staging)):
        if name == MODEL_INDEX:
            continue
        target = os.path.join(output_dir, name)
        if os.path.exists(target):
            os.replace(target, os.path.join(aside, name))
        os.replace(os.path.join(staging, name), target)
    os.replace(os.path.join(staging, MODEL_INDEX), index)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _put_back(output_dir: str) -> None:
    """Undo an interrupted ``_swap_in``: whatever waits in ``ASIDE`` returns to its place (unless the new
    ``model_index.json`` had landed)."""
    aside = os.path.join(output_dir, ASIDE)
    if not os.path.isdir(aside):
        return
    if os.path.exists(os.path.join(output_dir, MODEL_INDEX)):  # the swap had finished: only the cleanup was cut
        shutil.rmtree(aside, ignore_errors=True)
        return
    for name in os.listdir(aside):
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
        os.replace(os.path.join(aside, name), target)
    shutil.rmtree(aside, ignore_errors=True)


def save_pipeline_folder(parts: dict, output_dir: str, extra_files=None, stale=()) -> None:
    """Components in float32 under ``output_dir`` + ``model_index.json``; checkpoints and logs are left alone.
    ``extra_files(staging)`` adds files to the staged folder (they move in with it, e.g. LoRA adapters);
    ``stale`` names entries of ``output_dir`` the new folder must not keep (removed only once it is in place).

    Written as a checkpoint is: into ``output_dir/.pipeline.partial`` first, then moved into place with
    ``model_index.json`` last, so a failure (a full disk) or a kill never leaves a folder that loads as a
    half-written model, and a failure while writing leaves the previous contents as they were
    (``FinalSaveError`` states the space needed)."""
    for model in parts.values():
        if isinstance(model, torch.nn.Module) and model.dtype != torch.float32:
            cast_model(model, torch.float32)
    pipe = AnyText2Pipeline.from_parts(parts)
    components = pipe.components
    os.makedirs(output_dir, exist_ok=True)
    _put_back(output_dir)  # a swap interrupted by a kill in an earlier run
    staging = os.path.join(output_dir, STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    needed = _bytes_to_write(components)
    try:
        free = shutil.disk_usage(output_dir).free
        if free < needed:
            raise OSError(errno.ENOSPC, "not enough free space (checked before writing)")
        pipe.save_pretrained(staging)
        if extra_files is not None:
            extra_files(staging)
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        free = shutil.disk_usage(output_dir).free
        raise FinalSaveError(
            f"the final pipeline folder was not written to {output_dir} ({type(err).__name__}: {err}); it needs "
            f"about {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free there; nothing in it was replaced"
        ) from err
    try:
        _swap_in(staging, output_dir, stale)
    except Exception as err:
        _put_back(output_dir)
        raise FinalSaveError(f"moving the final pipeline folder into {output_dir} failed ({err}); rolled back") from err
