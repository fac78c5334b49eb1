"""Sentence accuracy and normalised edit distance (NED) of recognised text lines, as AnyText2 scores them.

Sentence accuracy is an exact string match (no case folding, no whitespace stripping). NED is
``1 - Levenshtein(pred, gt) / max(len(pred), len(gt))`` on per-character class ids of the OCR
character table, characters outside the table all mapping to its last id (so two different unknown
characters count as equal, as in the reference). Both empty -> 1. The reference adds 1e-5 to the
denominator, which moves a score by less than 1e-5; we use the exact ratio.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (unit-cost insertions, deletions, substitutions) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class CharIds:
    """Character -> class id with AnyText2's unknown rule (unknown characters -> the last id)."""

    def __init__(self, characters: Sequence[str] | None = None):
        if characters is None:
            from ..models.ocr import load_character_list

            characters = load_character_list()
        # A dict comprehension keeps the last index of a duplicated entry, as the reference does.
        self.mapping = {c: i for i, c in enumerate(characters)}
        self.unknown = len(characters) - 1

    def __call__(self, text: str) -> list[int]:
        return [self.mapping.get(c, self.unknown) for c in text]


def sentence_accuracy(pred: str, gt: str) -> float:
    """1.0 for an exact match of the strings, else 0.0."""
    return 1.0 if pred == gt else 0.0


def normalized_edit_similarity(pred: str, gt: str, char_ids: CharIds | None = None) -> float:
    """AnyText2's NED: 1 - edit distance / max length, on character ids when ``char_ids`` is given."""
    a = char_ids(pred) if char_ids is not None else list(pred)
    b = char_ids(gt) if char_ids is not None else list(gt)
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


@dataclass
class LineScore:
    image: str  # file name of the scored image
    line: int  # index of the line in the benchmark item
    language: str  # the group the line is reported in
    gt: str
    pred: str
    sen_acc: float
    ned: float


@dataclass
class OCRScores:
    """Per-line scores; means are over all scored lines (every line of every sample counts once)."""

    lines: list[LineScore] = field(default_factory=list)

    def add(self, line: LineScore) -> None:
        self.lines.append(line)

    def summary(self) -> dict:
        """``{"sen_acc", "ned", "lines", "per_language": {lang: {"sen_acc", "ned", "lines"}}}``."""

        def stats(group: list[LineScore]) -> dict:
            if not group:
                return {"sen_acc": None, "ned": None, "lines": 0}
            return {
                "sen_acc": float(np.mean([s.sen_acc for s in group])),
                "ned": float(np.mean([s.ned for s in group])),
                "lines": len(group),
            }

        out = stats(self.lines)
        languages = sorted({s.language for s in self.lines})
        out["per_language"] = {lang: stats([s for s in self.lines if s.language == lang]) for lang in languages}
        return out
