"""Safe reading of weight files: safetensors, or torch pickles restricted to tensors (``weights_only``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file


class UnsafeCheckpointError(RuntimeError):
    """A pickle checkpoint that needs more than plain tensors and containers to load."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``.safetensors`` directly and ``.ckpt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)``.

    A pickle that would construct arbitrary objects (and so could execute code) is refused, never run.
    Lightning checkpoints are unwrapped from their ``state_dict`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused to load. The pickle holds objects other than tensors, which could execute "
            f"code on load ({str(err).splitlines()[0]}). Convert it to safetensors in a trusted environment."
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return obj
