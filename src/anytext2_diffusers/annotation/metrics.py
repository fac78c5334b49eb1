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


def match_lines(predicted: list[dict], truth: list[dict], iou_threshold: float = 0.5) -> LineAccuracy:
    """One-to-one greedy matching by descending IoU (pairs at or above ``iou_threshold``); a match
    reads exactly when the texts are equal after stripping spaces at both ends."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, t in enumerate(truth):
            iou = polygon_iou(p["polygon"], t["polygon"])
            if iou >= iou_threshold:
                pairs.append((iou, i, j))
    used_p, used_t = set(), set()
    acc = LineAccuracy(truth=len(truth), predicted=len(predicted))
    for _, i, j in sorted(pairs, reverse=True):
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        acc.matched += 1
        acc.exact += int(predicted[i]["text"].strip() == truth[j]["text"].strip())
    return acc
