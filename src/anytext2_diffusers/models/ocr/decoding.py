"""Greedy CTC decoding (best path): argmax per step, collapse repeats, drop the blank."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .vocab import BLANK_INDEX


def ctc_greedy_ids(logits: torch.Tensor, blank: int = BLANK_INDEX) -> list[list[int]]:
    """(N, T, C) scores (logits or probabilities: argmax is the same) -> class ids per line."""
    if logits.ndim != 3:
        raise ValueError(f"expected (N, T, C) scores, got shape {tuple(logits.shape)}")
    best = logits.detach().argmax(dim=-1).cpu()
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [row[k].tolist() for row, k in zip(best, keep)]


def ids_to_text(ids: Sequence[int], characters: Sequence[str]) -> str:
    return "".join(characters[i] for i in ids)


def ctc_greedy_decode(logits: torch.Tensor, characters: Sequence[str], blank: int = BLANK_INDEX) -> list[str]:
    """(N, T, C) -> N strings. ``characters`` must cover C classes."""
    if logits.shape[-1] != len(characters):
        raise ValueError(f"scores have {logits.shape[-1]} classes but the character table has {len(characters)}")
    return [ids_to_text(ids, characters) for ids in ctc_greedy_ids(logits, blank)]
