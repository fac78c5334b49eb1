"""AnyText2's per-line OCR losses for one training batch, from images or from ready crops.

Decoded and original crops go through the recognizer in one ``recognize_crops`` call, as in the
reference ``p_losses`` (it matters only if the recognizer were in train mode). The reference runs the
recognizer in eval mode for these losses; so should callers (``recognizer.eval()``, parameters frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .crop import crop_lines
from .losses import ctc_loss_per_line, language_weight, ocr_perceptual_loss_per_line
from .preprocess import recognize_crops


@dataclass
class OCRLineLosses:
    """Per valid line, sample-major: ``perceptual`` (neck MSE x language weight), ``ctc`` (CTC / T x
    language weight); ``weights`` are the language weights used. Reduce with ``mean_per_sample``."""

    perceptual: torch.Tensor
    ctc: torch.Tensor
    weights: torch.Tensor


def ocr_line_losses_from_crops(
    recognizer,
    decoded_crops: Sequence[torch.Tensor],
    original_crops: Sequence[torch.Tensor],
    texts: Sequence[str],
    languages: Sequence[str],
    latin_weight: float = 1.0,
    batch_size: int = 6,
) -> OCRLineLosses:
    """Crops are CHW in 0..255; only the decoded crops need to carry gradients."""
    n = len(decoded_crops)
    if not (n == len(original_crops) == len(texts) == len(languages)):
        raise ValueError(
            f"{n} decoded crops, {len(original_crops)} original crops, {len(texts)} texts, {len(languages)} languages"
        )
    out = recognize_crops(recognizer, list(decoded_crops) + list(original_crops), batch_size=batch_size)
    weights = torch.tensor([language_weight(lang, latin_weight) for lang in languages], device=out.neck.device)
    return OCRLineLosses(
        perceptual=ocr_perceptual_loss_per_line(out.neck[:n], out.neck[n:], weights),
        ctc=ctc_loss_per_line(out.logits[:n], texts, recognizer.characters, weights),
        weights=weights,
    )


def ocr_line_losses(
    recognizer,
    decoded_images: torch.Tensor,
    original_images: torch.Tensor,
    positions,
    n_lines: Sequence[int],
    texts: Sequence[str],
    languages: Sequence[str],
    latin_weight: float = 1.0,
    batch_size: int = 6,
) -> OCRLineLosses:
    """Images (B, 3, H, W) in 0..255 (decoded: clamp(vae.decode(pred_x0), -1, 1) mapped to 0..255);
    ``positions`` per sample and line (see :func:`crop_lines`); ``texts``/``languages`` per valid line,
    sample-major."""
    decoded = crop_lines(decoded_images, positions, n_lines)
    original = crop_lines(original_images, positions, n_lines)
    if not decoded:
        empty = decoded_images.new_zeros((0,))
        return OCRLineLosses(perceptual=empty, ctc=empty, weights=empty)
    return ocr_line_losses_from_crops(recognizer, decoded, original, texts, languages, latin_weight, batch_size)
