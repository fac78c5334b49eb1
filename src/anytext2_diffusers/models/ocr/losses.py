"""AnyText2's two OCR losses, per text line (callers weight and reduce them).

* CTC: ``ctc(log_softmax(logits), labels, blank=0) / T * language_weight`` (T = 40 steps).
* perceptual: ``mean((neck(decoded crop) - neck(original crop))^2) * language_weight``.

``p_losses`` then averages the lines of each sample and multiplies by ``loss_alpha``/``loss_beta``
and the step weight ``alphas_cumprod[t]``; :func:`mean_per_sample` does the first part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .vocab import BLANK_INDEX, texts_to_labels


def language_weight(language: str, latin_weight: float = 1.0) -> float:
    """AnyText2: Latin lines get ``latin_weight``, Chinese and every other language 1.0."""
    return float(latin_weight) if language == "Latin" else 1.0


def _weights(weights, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, device=like.device, dtype=like.dtype)
    w = torch.as_tensor(weights, device=like.device, dtype=like.dtype)
    if w.shape != (n,):
        raise ValueError(f"expected {n} per-line weights, got shape {tuple(w.shape)}")
    return w


def ctc_loss_per_line(
    logits: torch.Tensor, texts: Sequence[str], characters: Sequence[str], weights=None
) -> torch.Tensor:
    """(N,) CTC loss of each line's logits (N, T, C) against its text, divided by T, times its weight.

    Unknown characters count as the last class; a target longer than T gives ``inf`` (as the reference,
    which does not set ``zero_infinity``)."""
    if logits.shape[0] != len(texts):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(texts)} texts")
    targets, target_lengths = texts_to_labels(texts, characters)
    n, t = logits.shape[:2]
    # float32 as under autocast (CPU ctc_loss has no half kernel; half log-probabilities lose the tail)
    log_probs = logits.float().log_softmax(dim=2).permute(1, 0, 2)
    input_lengths = torch.full((n,), t, dtype=torch.long)
    loss = F.ctc_loss(
        log_probs,
        targets.to(logits.device),
        input_lengths.to(logits.device),
        target_lengths.to(logits.device),
        blank=BLANK_INDEX,
        reduction="none",
    )
    return loss / t * _weights(weights, n, loss)


def ocr_perceptual_loss_per_line(neck: torch.Tensor, neck_target: torch.Tensor, weights=None) -> torch.Tensor:
    """(N,) mean squared difference of two (N, T, D) neck feature sets, times the per-line weight."""
    if neck.shape != neck_target.shape:
        raise ValueError(f"neck shapes differ: {tuple(neck.shape)} vs {tuple(neck_target.shape)}")
    loss = ((neck.float() - neck_target.float()) ** 2).mean(dim=(1, 2))  # float32 whatever the recognizer's dtype
    return loss * _weights(weights, neck.shape[0], loss)


def mean_per_sample(per_line: torch.Tensor, n_lines: Sequence[int]) -> torch.Tensor:
    """(B,) mean over each sample's lines (lines sample-major); a sample without lines gives 0."""
    out, start = [], 0
    for n in (int(x) for x in n_lines):
        chunk = per_line[start : start + n]
        out.append(chunk.mean() if n > 0 else per_line.new_zeros(()))
        start += n
    if start != per_line.shape[0]:
        raise ValueError(f"n_lines sums to {start} but there are {per_line.shape[0]} per-line values")
    return torch.stack(out) if out else per_line.new_zeros((0,))
