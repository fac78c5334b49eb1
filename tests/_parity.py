"""What the parity tests share: where the reference parity pack is (one skip gate) and its criterion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The pack's criterion (shared/parity/README.md): max|ours - ref| <= 1e-4 * max(1, max|ref|).
TOLERANCE = 1e-4
PACK_FILES = ("reference_meta.json", "reference_outputs.safetensors")


def pack_dir() -> Path | None:
    """``ANYTEXT2_PARITY_DIR`` when it holds a parity pack, else None."""
    path = os.environ.get("ANYTEXT2_PARITY_DIR")
    if not path or not all((Path(path) / name).is_file() for name in PACK_FILES):
        return None
    return Path(path)


requires_pack = pytest.mark.skipif(
    pack_dir() is None, reason="ANYTEXT2_PARITY_DIR is not set to a parity pack (see shared/parity/README.md)"
)


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The pack's criterion, after checking that the shapes agree (no broadcasting); returns max|diff|."""
    ours, ref = ours.detach().float().cpu(), ref.float()
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item() if ref.numel() else 0.0
    bound = TOLERANCE * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    assert diff <= bound, f"{name}: max|diff| {diff:.3e} > {bound:.3e}"
    return diff


def nchw(array) -> torch.Tensor:
    """NHWC -> contiguous NCHW float32 (the reference feeds contiguous tensors; a channels-last view takes
    other conv kernels, which the VAE amplifies on flat images)."""
    return torch.from_numpy(np.asarray(array)).float().permute(0, 3, 1, 2).contiguous()


def line_major(array) -> torch.Tensor:
    """The pack's (L, B, H, W, C) per-line arrays -> (B, L, C, H, W) float32 (as the reference's get_input)."""
    return torch.from_numpy(np.asarray(array)).float().permute(1, 0, 4, 2, 3).contiguous()
