"""Safe reading of weight files: safetensors, or torch pickles restricted to tensors (``weights_only``)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file


class UnsafeCheckpointError(RuntimeError):
    """A pickle checkpoint that needs more than plain tensors and containers to load."""


def _load_pickle(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:  # mmap needs the zip format; older pickles load whole
            if not mmap or "zip" not in str(err).lower():
                raise
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
    return _load_pickle(path, mmap=False)


class LazyStateDict(Mapping):
    """A weight file's tensors, read when asked for instead of all at once (whole-model conversions keep
    only the component they are building in memory). ``.safetensors`` files are opened per read
    (``safe_open``), so nothing stays mapped between reads; pickles are memory-mapped
    (``torch.load(mmap=True, weights_only=True)``) when their format allows it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        self._tensors = None
        if self.path.suffix == ".safetensors":
            with safe_open(str(self.path), framework="pt") as f:
                self._keys = list(f.keys())
        else:
            self._tensors = _load_pickle(self.path, mmap=True)
            self._keys = list(self._tensors)
        self._keyset = set(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._keyset

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keyset:
            raise KeyError(key)
        return self.select([key])[key]

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape without reading its data."""
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        with safe_open(str(self.path), framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def select(self, keys) -> dict[str, torch.Tensor]:
        """The tensors of ``keys`` (an iterable of names), read in one pass."""
        if self._tensors is not None:
            return {k: self._tensors[k] for k in keys}
        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def with_prefix(self, *prefixes: str) -> dict[str, torch.Tensor]:
        return self.select(k for k in self._keys if k.startswith(prefixes))
