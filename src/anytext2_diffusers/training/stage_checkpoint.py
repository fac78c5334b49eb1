"""One-file checkpoints for the demo recipe's small single-model trainers (``training.vae``,
``training.unet_pretrain``): the model, its optimizer, the step and the wall time in one atomic
``checkpoint.pt``, the model's config recorded beside them, and a ``log.jsonl`` cut back to the step
resumed from. (The AnyText2 loop has its own Accelerate checkpoints: ``training.checkpointing``.)"""

from __future__ import annotations

import json
import logging
import os

import torch

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def plain_config(model) -> dict:
    """A diffusers model's config as JSON reads it back (tuples as lists)."""
    return json.loads(json.dumps(dict(model.config)))


def first_difference(saved: dict, current: dict, ignore: tuple = ()) -> str | None:
    """The first architecture field (not ``_``-private, not in ``ignore``) on which two configs differ."""
    for key in sorted(set(saved) | set(current)):
        if not key.startswith("_") and key not in ignore and saved.get(key) != current.get(key):
            return key
    return None


def save(path: str, model, optimizer, step: int, wall_s: float, config_key: str) -> None:
    """Write ``path`` atomically (a ``.partial`` file renamed over it): a kill never leaves a torn file."""
    tmp = path + ".partial"
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, wall_s=wall_s)
    state[config_key] = json.dumps(dict(model.config))
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_config(path: str, state: dict, model, config_key: str) -> None:
    """Refuse a checkpoint written with another architecture setting: a changed ``norm_num_groups`` keeps every
    weight's shape, so loading would succeed and silently train (or score) a different model."""
    if config_key not in state:  # written before checkpoints recorded their config
        logger.warning("%s does not record its model config; assuming the current one", path)
        return
    saved, current = json.loads(state[config_key]), plain_config(model)
    key = first_difference(saved, current)
    if key is not None:
        raise ValueError(f"{path}: field {config_key}.{key} is {saved.get(key)!r}, this run's is {current.get(key)!r}")


def resume(output_dir: str, model, optimizer, config_key: str) -> tuple[int, float]:
    """Load ``output_dir/checkpoint.pt`` into ``model`` and ``optimizer`` if it exists; (step, wall seconds)."""
    path = os.path.join(output_dir, CHECKPOINT)
    if not os.path.isfile(path):
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_config(path, state, model, config_key)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state["wall_s"])


def trim_log(log_path: str, step: int) -> None:
    """Drop the rows after ``step``: a resumed run writes them again."""
    if not os.path.isfile(log_path):
        return
    with open(log_path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(log_path, "w", encoding="utf-8") as f:
        f.writelines(kept)


def log_window(log_path: str, window: list[dict], step: int, wall_s: float) -> dict:
    """Append the mean of ``window``'s losses at ``step`` to ``log_path``; returns the row."""
    row = {k: round(sum(w[k] for w in window) / len(window), 5) for k in window[0]}
    row.update(step=step, wall_s=round(wall_s, 1))
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row
