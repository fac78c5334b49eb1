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


def ctc_greedy_decode_with_scores(
    logits: torch.Tensor, characters: Sequence[str], blank: int = BLANK_INDEX
) -> tuple[list[str], list[float]]:
    """Greedy decode plus PaddleOCR's line confidence: the mean softmax probability of the kept
    (non-blank, non-repeated) steps, 0.0 for an empty reading."""
    texts = ctc_greedy_decode(logits, characters, blank)
    probs = logits.detach().float().softmax(dim=-1).cpu()
    best_p, best = probs.max(dim=-1)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    scores = [float(p[k].mean()) if bool(k.any()) else 0.0 for p, k in zip(best_p, keep)]
    return texts, scores
