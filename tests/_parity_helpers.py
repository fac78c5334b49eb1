"""Tolerances shared by the parity tests (``ANYTEXT2_PARITY_DIR``, see the pack's README and docs/parity.md).

Two kinds of comparison:

* stage-wise: a stage is fed the reference's own input to it (stored in the pack) and compared at the
  pack's criterion ``max|a-b| <= 1e-4 * max(1, max|ref|)``;
* end to end: our chained computation (our crop -> our recognizer -> ...) compared with the reference's
  chain. The rotated-line crop (an SVD and a matmul, whose kernels differ per CPU family) feeds randomly
  initialised, BatchNorm-calibrated recognizers that amplify its last-bit differences; the reference
  itself, rerun on another CPU family, moves these tensors by ``CPU_SPREAD``. Such a tensor is compared at
  ``MARGIN`` times that spread instead of 1e-4.
"""

from __future__ import annotations

import torch

PACK_TOLERANCE = 1e-4

# max|AMD pack - Intel pack| / max(1, max|ref|) of the tensors downstream of a rotated-line crop, which the
# tests also compare end to end (the two reference runs share weights recipe, seeds and batch; only the
# BLAS/MKL kernels differ); measured with
# `python benchmarks/parity_pack_spread.py ../shared/parity ../shared/parity-intel`. The crops themselves
# move by at most 3.4e-5 (cond.style_crop.1) and stay at PACK_TOLERANCE (2.9x margin).
CPU_SPREAD = {
    "cond.style_neck": 2.40e-4,
    "cond.em_style": 9.26e-5,
    "cond.text_embs": 8.69e-5,
    "cond.text_context": 7.87e-5,
    "loss.ocr_neck": 2.73e-4,
}
# One pair of CPU families is one sample of the spread: a third kernel set may land on the far side of
# either pack (2x), and we keep another 2x for CPUs nobody measured.
MARGIN = 4.0


def relative_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|a-b| / max(1, max|ref|)``: the quantity both kinds of tolerance bound."""
    ours, ref = ours.detach().float(), ref.detach().float()
    return (ours - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def end_to_end_tolerance(name: str) -> float:
    """The relative tolerance of our chained computation of tensor ``name`` (``cond.style_crop.3`` looks
    up ``cond.style_crop``)."""
    key = name if name in CPU_SPREAD else name.rsplit(".", 1)[0]
    return max(PACK_TOLERANCE, MARGIN * CPU_SPREAD.get(key, 0.0))


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, end_to_end: bool = False) -> float:
    """Stage-wise (pack criterion) or, with ``end_to_end``, at :func:`end_to_end_tolerance`; returns the
    relative difference."""
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = relative_diff(ours, ref)
    tol = end_to_end_tolerance(name) if end_to_end else PACK_TOLERANCE
    kind = "end to end" if end_to_end else "stage-wise"
    print(f"parity {name} {kind}: {diff:.2e} (tolerance {tol:.1e})")  # pytest -s: the docs/parity.md table
    assert diff <= tol, f"{name} ({kind}): max|diff| / max(1, max|ref|) = {diff:.3e} > {tol:.3e}"
    return diff


def assert_scalar_close(name: str, ours: float, ref: float, tol: float = PACK_TOLERANCE) -> None:
    """Small scalars (OCR losses ~1e-4..1e-2) relatively: the absolute criterion would accept anything below
    1e-4. Both packs' loss scalars agree to 6e-6 relative."""
    print(f"parity {name} relative: {abs(ours - ref) / abs(ref):.2e} (tolerance {tol:.1e})")
    assert abs(ours - ref) <= tol * abs(ref), f"{name}: {ours!r} vs reference {ref!r} (relative tolerance {tol:.0e})"
