"""A second detector look at steep lines, turned horizontal.

DBNet was trained mostly on horizontal text. On a steep line it can lose some characters from its
probability map and keep a box over the rest (`fee` of `coffee`, `wor` of `world`), which no threshold on
that map separates from a true line. Cutting the box's neighbourhood out of the image, turned so the
box lies horizontal and at the scale the detector saw the whole image, and detecting again often
finds the whole line. The box is replaced only when the second look finds a box on the same line
that holds it and is clearly longer (``longer_line``); everything else is left as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .crop import order_box_points
from .detection import boxes_from_probability_map


@dataclass
class SecondLookConfig:
    """Which boxes get a second look, the window around them, and when its box replaces theirs.

    ``min_steepness``: degrees between the box's long axis and the nearest image axis (lines closer
    to horizontal or vertical than this are left alone); the window is the box's long side plus
    ``window_ends`` box heights at each end, ``window_height`` box heights tall; a box found there
    replaces the original when it holds at least ``min_cover`` of the original's area, its axis is
    within ``max_angle`` degrees, and it is at least ``min_growth`` times as long.
    """

    min_steepness: float = 20.0
    window_ends: float = 4.0
    window_height: float = 4.0
    min_cover: float = 0.5
    max_angle: float = 10.0
    min_growth: float = 1.2
    max_window_side: int = 4000


def line_rect(box: np.ndarray) -> tuple[tuple[float, float], float, float, float]:
    """Centre, length (long side), height (short side) and long-axis angle in degrees of the box's
    minimum-area rectangle."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(np.asarray(box, dtype=np.float32))
    if h > w:
        w, h, angle = h, w, angle + 90.0
    return (float(cx), float(cy)), float(w), float(h), float(angle)


def steepness(box: np.ndarray) -> float:
    """Degrees between the box's long axis and the nearest image axis: 0 for horizontal and vertical
    lines, 45 at most."""
    a = line_rect(box)[3] % 90.0
    return min(a, 90.0 - a)


def _angle_between(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def _cover(box: np.ndarray, other: np.ndarray) -> float:
    """Share of ``box``'s area inside ``other`` (both rectangles)."""
    a = order_box_points(np.asarray(box, dtype=np.float32)).astype(np.float32)
    b = order_box_points(np.asarray(other, dtype=np.float32)).astype(np.float32)
    area = cv2.contourArea(a)
    if area <= 0:
        return 0.0
    inter, _ = cv2.intersectConvexConvex(a, b)
    return float(inter) / float(area)


def longer_line(box: np.ndarray, candidates, config: SecondLookConfig | None = None) -> np.ndarray | None:
    """The candidate box that holds most of ``box``, when it is the same line found longer (the
    ``SecondLookConfig`` conditions); ``None`` when no candidate is."""
    cfg = config or SecondLookConfig()
    candidates = [np.asarray(c, dtype=np.float32) for c in candidates]
    if not candidates:
        return None
    covers = [_cover(box, c) for c in candidates]
    best = int(np.argmax(covers))
    _, length, _, angle = line_rect(box)
    _, new_length, _, new_angle = line_rect(candidates[best])
    if (
        covers[best] >= cfg.min_cover
        and _angle_between(angle, new_angle) <= cfg.max_angle
        and new_length >= cfg.min_growth * length
    ):
        return order_box_points(candidates[best]).astype(np.float32)
    return None


def horizontal_window(
    image: np.ndarray, box: np.ndarray, scale: float, config: SecondLookConfig | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The box's neighbourhood turned so its long axis is horizontal, scaled by ``scale``, sides
    rounded up to multiples of 32 (border pixels replicated), and the 2 x 3 affine map from window back
    to image pixels; ``None`` when the window would exceed ``max_window_side``."""
    cfg = config or SecondLookConfig()
    (cx, cy), length, height, angle = line_rect(box)
    out_w = int(math.ceil(scale * (length + 2 * cfg.window_ends * height) / 32) * 32)
    out_h = int(math.ceil(scale * cfg.window_height * height / 32) * 32)
    if max(out_w, out_h) > cfg.max_window_side:
        return None
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += out_w / 2 - cx
    m[1, 2] += out_h / 2 - cy
    window = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return window, cv2.invertAffineTransform(m)


def look_again(detector, image: np.ndarray, boxes: np.ndarray, config: SecondLookConfig | None = None):
    """``boxes`` of one RGB image with each steep box replaced by the longer line a second detector
    look finds around it (``longer_line``), and the number replaced. ``detector``: a ``PPOCRDetector``;
    the window is scaled as the detector scaled the whole image, so characters keep their size."""
    cfg = config or SecondLookConfig()
    boxes = np.asarray(boxes, dtype=np.float32)
    height, width = image.shape[:2]
    in_h, in_w = detector.input_size(height, width)
    scale = math.sqrt(in_h * in_w / float(height * width))
    steep, windows = [], []
    for i, box in enumerate(boxes):
        if steepness(box) >= cfg.min_steepness:
            window = horizontal_window(image, box, scale, cfg)
            if window is not None:
                steep.append(i)
                windows.append(window)
    if not steep:
        return boxes, 0
    maps = detector.probability_maps([w for w, _ in windows], resize=False)
    out, replaced = boxes.copy(), 0
    for i, (window, back), prob in zip(steep, windows, maps):
        found, _ = boxes_from_probability_map(prob, window.shape[0], window.shape[1], detector.postprocess)
        candidates = [cv2.transform(b[None].astype(np.float64), back)[0] for b in found]
        for c in candidates:
            c[:, 0] = np.clip(c[:, 0], 0, width - 1)
            c[:, 1] = np.clip(c[:, 1], 0, height - 1)
        new = longer_line(boxes[i], candidates, cfg)
        if new is not None:
            out[i] = new
            replaced += 1
    return out, replaced
