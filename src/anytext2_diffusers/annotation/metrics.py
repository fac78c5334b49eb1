"""Detection and reading accuracy of annotations against known lines (polygon IoU matching)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def polygon_iou(a, b) -> float:
    """IoU of two convex polygons ((K, 2) pixel points; quadrilaterals here)."""
    pa = cv2.convexHull(np.asarray(a, dtype=np.float32).reshape(-1, 2))
    pb = cv2.convexHull(np.asarray(b, dtype=np.float32).reshape(-1, 2))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = cv2.contourArea(pa) + cv2.contourArea(pb) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class LineAccuracy:
    """Counts over a set of images; ``recall``/``precision`` of detection at the IoU threshold and the
    share of matched lines read exactly."""

    truth: int = 0
    predicted: int = 0
    matched: int = 0
    exact: int = 0

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else 1.0

    @property
    def exact_read(self) -> float:
        return self.exact / self.matched if self.matched else 0.0

    def add(self, other: LineAccuracy) -> LineAccuracy:
        self.truth += other.truth
        self.predicted += other.predicted
        self.matched += other.matched
        self.exact += other.exact
        return self

    def as_dict(self) -> dict:
        return {
            "truth": self.truth,
            "predicted": self.predicted,
            "matched": self.matched,
            "recall": round(self.recall, 4),
            "precision": round(self.precision, 4),
            "exact_read": round(self.exact_read, 4),
        }


def _one_to_one(predicted: list[dict], truth: list[dict], iou_threshold: float) -> list[tuple[int, int, float]]:
    """(prediction, truth line, IoU) pairs: greedy by descending IoU, each side used once."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, t in enumerate(truth):
            iou = polygon_iou(p["polygon"], t["polygon"])
            if iou >= iou_threshold:
                pairs.append((iou, i, j))
    used_p, used_t, matches = set(), set(), []
    for iou, i, j in sorted(pairs, reverse=True):
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j, iou))
    return matches


def _reads_exactly(predicted: dict, truth: dict) -> bool:
    return predicted["text"].strip() == truth["text"].strip()


def match_lines(predicted: list[dict], truth: list[dict], iou_threshold: float = 0.5) -> LineAccuracy:
    """One-to-one greedy matching by descending IoU (pairs at or above ``iou_threshold``); a match
    reads exactly when the texts are equal after stripping spaces at both ends."""
    matches = _one_to_one(predicted, truth, iou_threshold)
    acc = LineAccuracy(truth=len(truth), predicted=len(predicted), matched=len(matches))
    acc.exact = sum(_reads_exactly(predicted[i], truth[j]) for i, j, _ in matches)
    return acc


def line_errors(predicted: list[dict], truth: list[dict], iou_threshold: float = 0.5) -> list[dict]:
    """What ``match_lines`` counts against a pipeline on one image, one dict per error: ``wrong_box``
    (an annotation matching no line), ``missed`` (a line no annotation matches) or ``misread`` (matched,
    other text); with the truth and read texts, the annotation's ``score`` and the best IoU between the
    two (for a wrong box: with any line; for a missed line: with any annotation)."""
    matches = _one_to_one(predicted, truth, iou_threshold)
    errors = []
    for i, j, iou in matches:
        if not _reads_exactly(predicted[i], truth[j]):
            errors.append(_error("misread", truth[j], predicted[i], iou))
    matched_p, matched_t = {i for i, _, _ in matches}, {j for _, j, _ in matches}
    for i, p in enumerate(predicted):
        if i not in matched_p:
            iou, best = _best_overlap(p, truth)
            errors.append(_error("wrong_box", best, p, iou))
    for j, t in enumerate(truth):
        if j not in matched_t:
            iou, best = _best_overlap(t, predicted)
            errors.append(_error("missed", t, best, iou))
    return errors


def _best_overlap(line: dict, others: list[dict]) -> tuple[float, dict | None]:
    """The other line overlapping ``line`` most, with its IoU; None when none overlaps at all."""
    scored = [(polygon_iou(line["polygon"], o["polygon"]), k) for k, o in enumerate(others)]
    iou, k = max(scored, default=(0.0, -1))
    return (iou, others[k]) if iou > 0 else (0.0, None)


def _error(kind: str, truth: dict | None, predicted: dict | None, iou: float) -> dict:
    return {
        "kind": kind,
        "truth": truth["text"] if truth else None,
        "read": predicted["text"] if predicted else None,
        "score": round(float(predicted["score"]), 3) if predicted and "score" in predicted else None,
        "iou": round(float(iou), 2),
        "polygon": np.round(np.asarray((predicted if kind == "wrong_box" else truth)["polygon"])).astype(int).tolist(),
    }
