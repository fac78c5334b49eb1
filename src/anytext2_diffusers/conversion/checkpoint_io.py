"""Safe reading of original checkpoints and key-coverage reports."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .original import PREFIXES, SCHEDULE_KEYS


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


@dataclass
class KeyReport:
    """Which checkpoint keys a conversion used, per ControlLDM prefix."""

    total: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'prefix':40s} {'keys':>6s} {'used':>6s}"]
        for prefix, n in self.total.items():
            lines.append(f"{prefix:40s} {n:6d} {self.used.get(prefix, 0):6d}")
        lines.append(f"unused keys: {len(self.unused)}; missing keys: {len(self.missing)}")
        lines += [f"  unused: {k}" for k in self.unused[:20]] + [f"  missing: {k}" for k in self.missing[:20]]
        return "\n".join(lines)


def _prefix(key: str) -> str:
    if key in SCHEDULE_KEYS:
        return "(noise schedule)"
    return next((p for p in PREFIXES if key.startswith(p)), "(other)")


def key_report(checkpoint: dict, used: set[str], expected: set[str] | None = None) -> KeyReport:
    report = KeyReport()
    for key in checkpoint:
        p = _prefix(key)
        report.total[p] = report.total.get(p, 0) + 1
        if key in used:
            report.used[p] = report.used.get(p, 0) + 1
        else:
            report.unused.append(key)
    if expected is not None:
        report.missing = sorted(expected - set(checkpoint))
    report.total = dict(sorted(report.total.items()))
    return report
