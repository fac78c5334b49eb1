"""PP-OCRv3 text detection (DBNet) with PaddleOCR's inference pre- and post-processing.

The network runs in onnxruntime on the ``ch_PP-OCRv3_det_infer.onnx`` export that
rapidocr-onnxruntime ships beside the recognizer (CPU, or CUDA with onnxruntime-gpu). Detection is
never trained and needs no gradients, so a torch port would buy nothing but upkeep; see
docs/own_data.md for the measurement behind the choice.

Post-processing follows PaddleOCR's ``DBPostProcess`` with the defaults of ``tools/infer/utility.py``:
binarise the probability map at 0.3, take each contour's minimum-area rectangle, keep it when the mean
probability inside is at least 0.6, grow it by ``area * 1.5 / perimeter`` on every side (the Vatti
offset of a rectangle, whose minimum-area rectangle is exactly the rectangle grown by that distance),
and map it back to the image. Inputs are resized so the longer side is at most 960 pixels (or, with
RapidOCR's ``min`` rule, the shorter side at least 736), the longer side capped at 4000, each side a
multiple of 32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .crop import order_box_points
from .rapidocr_files import RAPIDOCR_DET_MODEL, rapidocr_model_path

# PaddleOCR's detector input normalisation (ImageNet statistics on a 0..1 image in BGR order).
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def default_det_onnx_path() -> Path:
    """``ch_PP-OCRv3_det_infer.onnx`` inside the installed rapidocr-onnxruntime package."""
    return rapidocr_model_path(RAPIDOCR_DET_MODEL)


@dataclass
class DBPostProcessConfig:
    """PaddleOCR's DB defaults (``det_db_*`` in tools/infer/utility.py)."""

    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    max_candidates: int = 1000
    min_size: float = 3.0
    use_dilation: bool = False  # grow the binary map by a 2x2 kernel first (RapidOCR turns this on)


def resize_for_detection(
    height: int, width: int, limit_side_len: int = 960, limit_type: str = "max", max_side_limit: int | None = 4000
):
    """Network input size: ``max`` shrinks so the longer side is at most ``limit_side_len``, ``min``
    enlarges so the shorter side is at least that (RapidOCR's rule), ``resize_long`` scales the longer
    side to exactly that; a result longer than ``max_side_limit`` is scaled down to it (the guard of
    PaddleX's DetResizeForTest, which PaddleOCR 3 runs: without it ``min`` turns a 10000 x 200 banner
    into a 36800 x 736 input); then each side is rounded to a multiple of 32."""
    if limit_type == "max":
        ratio = limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0
    elif limit_type == "resize_long":
        ratio = limit_side_len / max(height, width)
    elif limit_type == "min":
        ratio = limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    else:
        raise ValueError(f"limit_type must be 'max', 'min' or 'resize_long', got {limit_type!r}")
    # Scaled sides are truncated to whole pixels before rounding to 32, as both PaddleOCR's and
    # RapidOCR's DetResizeForTest do (it decides the rounding when int(side * ratio) / 32 is near n + 0.5).
    new_h, new_w = int(height * ratio), int(width * ratio)
    if max_side_limit and max(new_h, new_w) > max_side_limit:
        shrink = max_side_limit / max(new_h, new_w)
        new_h, new_w = int(new_h * shrink), int(new_w * shrink)
    return max(int(round(new_h / 32) * 32), 32), max(int(round(new_w / 32) * 32), 32)


def _mini_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    return order_box_points(cv2.boxPoints(rect)), float(min(rect[1]))


def _box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box, over its clipped bounding rectangle (PaddleOCR's ``fast`` mode)."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    shifted = box.copy()
    shifted[:, 0] -= xmin
    shifted[:, 1] -= ymin
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def _unclip_rectangle(box: np.ndarray, ratio: float) -> np.ndarray:
    """Grow a rectangle by ``area * ratio / perimeter`` on every side (DB's unclip of a rectangle)."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(box.astype(np.float32))
    distance = w * h * ratio / max(2.0 * (w + h), 1e-6)
    return cv2.boxPoints(((cx, cy), (w + 2 * distance, h + 2 * distance), angle))


def boxes_from_probability_map(
    prob: np.ndarray, image_height: int, image_width: int, config: DBPostProcessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DB post-processing of one (h, w) probability map -> ((N, 4, 2) float boxes in image pixels,
    ordered top-left, top-right, bottom-right, bottom-left; (N,) box scores)."""
    cfg = config or DBPostProcessConfig()
    h, w = prob.shape
    bitmap = (prob > cfg.thresh).astype(np.uint8) * 255
    if cfg.use_dilation:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[: cfg.max_candidates]:
        box, short_side = _mini_box(contour)
        if short_side < cfg.min_size:
            continue
        score = _box_score_fast(prob, box)
        if score < cfg.box_thresh:
            continue
        box, short_side = _mini_box(_unclip_rectangle(box, cfg.unclip_ratio))
        if short_side < cfg.min_size + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / w * image_width), 0, image_width - 1)
        box[:, 1] = np.clip(np.round(box[:, 1] / h * image_height), 0, image_height - 1)
        box = order_box_points(box)
        # PaddleOCR's filter_tag_det_res: drop boxes that became thin after clipping to the image.
        if np.linalg.norm(box[0] - box[1]) <= 3 or np.linalg.norm(box[0] - box[3]) <= 3:
            continue
        boxes.append(box)
        scores.append(score)
    if not boxes:
        return np.zeros((0, 4, 2), dtype=np.float32), np.zeros((0,), dtype=np.float32)
    boxes = np.stack(boxes).astype(np.float32)
    # Reading order: top to bottom, then left to right (PaddleOCR's sorted_boxes, without its 10 px band).
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    return boxes[order], np.asarray(scores, dtype=np.float32)[order]


@dataclass
class FragmentMergeConfig:
    """When two detector boxes are pieces of one line (``merge_line_fragments``): their axes within
    ``max_angle`` degrees, the centre of one within ``max_offset`` line heights of the other's axis,
    line heights within ``min_height_ratio``, each box at least ``min_length`` heights long along the
    line (so two stacked horizontal lines, each long across the join, never pair), and the boxes
    touching or overlapping along the line (``max_gap`` heights; 0 = touching)."""

    max_angle: float = 10.0
    max_offset: float = 0.25
    min_height_ratio: float = 0.7
    min_length: float = 0.5
    max_gap: float = 0.0


def _line_axes(box: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The box's min-area-rectangle axis closest to ``direction`` (same sign), its side along that
    axis and its side across it."""
    _, (w, h), angle = cv2.minAreaRect(box.astype(np.float32))
    t = np.deg2rad(angle)
    e1, e2 = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    if abs(e1 @ direction) >= abs(e2 @ direction):
        return (e1 if e1 @ direction >= 0 else -e1), float(w), float(h)
    return (e2 if e2 @ direction >= 0 else -e2), float(h), float(w)


def same_line(a: np.ndarray, b: np.ndarray, config: FragmentMergeConfig | None = None) -> bool:
    """Whether boxes ``a`` and ``b`` ((4, 2) points) are two pieces of one text line (see
    ``FragmentMergeConfig``); measured in the line's own frame, so it holds for any angle."""
    cfg = config or FragmentMergeConfig()
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b.mean(axis=0) - a.mean(axis=0)
    if np.linalg.norm(d) < 1e-6:
        return False
    d /= np.linalg.norm(d)
    ua, len_a, height_a = _line_axes(a, d)
    ub, len_b, height_b = _line_axes(b, d)
    if min(height_a, height_b) <= 0 or np.degrees(np.arccos(np.clip(ua @ ub, -1.0, 1.0))) > cfg.max_angle:
        return False
    if min(height_a, height_b) / max(height_a, height_b) < cfg.min_height_ratio:
        return False
    if len_a < cfg.min_length * height_a or len_b < cfg.min_length * height_b:
        return False
    u = (ua + ub) / np.linalg.norm(ua + ub)
    height = (height_a + height_b) / 2
    if abs((b.mean(axis=0) - a.mean(axis=0)) @ np.array([-u[1], u[0]])) > cfg.max_offset * height:
        return False
    pa, pb = a @ u, b @ u
    gap = max(pb.min() - pa.max(), pa.min() - pb.max())
    return gap <= cfg.max_gap * height


def merge_line_fragments(boxes: np.ndarray, config: FragmentMergeConfig | None = None) -> np.ndarray:
    """Join detector boxes that are pieces of one line (``same_line``) into the min-area rectangle of
    both, until no pair is left; (N, 4, 2) in, (M, 4, 2) out in reading order.

    DB splits a line where its text probability dips below the threshold between two characters
    (short vertical words, steep words); the recognizer then reads each piece as a word of its own.
    Only boxes whose circumscribed circles meet are compared, so a dense page stays fast."""
    out = [np.asarray(b, dtype=np.float32) for b in boxes]
    if len(out) > 1:
        centres = np.stack([b.mean(axis=0) for b in out])
        radii = np.array([np.linalg.norm(b - b.mean(axis=0), axis=1).max() for b in out])
        i = 0
        while i < len(out):
            # Box i against every other box (a grown box is compared again, earlier ones included).
            near = np.linalg.norm(centres - centres[i], axis=1) <= radii + radii[i]
            near[i] = False
            for j in np.nonzero(near)[0]:
                if same_line(out[i], out[j], config):
                    rect = cv2.minAreaRect(np.concatenate([out[i], out[j]]))
                    out[i] = order_box_points(cv2.boxPoints(rect)).astype(np.float32)
                    centres[i] = out[i].mean(axis=0)
                    radii[i] = np.linalg.norm(out[i] - centres[i], axis=1).max()
                    del out[j]
                    centres, radii = np.delete(centres, j, axis=0), np.delete(radii, j)
                    i -= int(j < i)
                    break
            else:
                i += 1
    if not out:
        return np.zeros((0, 4, 2), dtype=np.float32)
    return np.stack(sorted(out, key=lambda box: (box[0][1], box[0][0])))


class PPOCRDetector:
    """PP-OCRv3 DBNet text detector: RGB uint8 images in, 4-point boxes out.

    ``device``: ``cpu`` or ``cuda`` (needs onnxruntime-gpu's CUDA provider; refused with a clear error
    otherwise). Images whose network input has the same size run as one batch. ``bgr``: the channel
    order fed to the network; ``both_orders``: run it on both orders and post-process the pixel-wise
    maximum of the two maps.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike | None = None,
        device: str = "cpu",
        limit_side_len: int = 960,
        limit_type: str = "max",
        postprocess: DBPostProcessConfig | None = None,
        num_threads: int | None = None,
        max_side_limit: int | None = 4000,
        bgr: bool = True,
        both_orders: bool = False,
    ):
        import onnxruntime as ort

        path = Path(onnx_path) if onnx_path is not None else default_det_onnx_path()
        if not path.is_file():
            raise FileNotFoundError(f"text detector model not found: {path}")
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "--device cuda: onnxruntime has no CUDAExecutionProvider here "
                    f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        options = ort.SessionOptions()
        # Input sizes vary from batch to batch; onnxruntime's CPU arena keeps every block it ever grew
        # to, so without it memory stays flat over a long run (measured in docs/own_data.md).
        options.enable_cpu_mem_arena = False
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_path = path
        self.limit_side_len = limit_side_len
        self.limit_type = limit_type
        self.max_side_limit = max_side_limit
        self.bgr = bgr
        self.both_orders = both_orders
        self.postprocess = postprocess or DBPostProcessConfig()

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (height, width) for an image of this size (``resize_for_detection`` with our limits)."""
        return resize_for_detection(height, width, self.limit_side_len, self.limit_type, self.max_side_limit)

    def preprocess(self, image: np.ndarray, bgr: bool | None = None, resize: bool = True) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> (3, h, w) float32 network input (BGR unless ``bgr=False``, ImageNet-normalised);
        ``resize=False`` feeds the image at its own size (its sides must be multiples of 32)."""
        bgr = self.bgr if bgr is None else bgr
        h, w = image.shape[:2]
        channels = image[:, :, ::-1] if bgr else image
        if resize:
            new_h, new_w = self.input_size(h, w)
            resized = cv2.resize(channels, (new_w, new_h))
        elif h % 32 or w % 32:
            raise ValueError(f"resize=False needs sides that are multiples of 32, got {h} x {w}")
        else:
            resized = np.ascontiguousarray(channels)
        x = (resized.astype(np.float32) / 255.0 - _MEAN) / _STD
        return x.transpose(2, 0, 1)

    def probability_maps(self, images: list[np.ndarray], resize: bool = True) -> list[np.ndarray]:
        """One (h, w) text probability map per image; with ``both_orders`` the pixel-wise maximum of the
        maps for BGR and for RGB input (a pixel is text when either order sees it: a line whose colours
        contrast weakly in one order is kept by the other; two passes). ``resize`` as in ``preprocess``."""
        maps = self._probability_maps(images, self.bgr, resize)
        if self.both_orders:
            maps = [np.maximum(a, b) for a, b in zip(maps, self._probability_maps(images, not self.bgr, resize))]
        return maps

    def _probability_maps(self, images: list[np.ndarray], bgr: bool, resize: bool = True) -> list[np.ndarray]:
        """Maps for one channel order, same-size inputs batched together."""
        inputs = [self.preprocess(im, bgr, resize) for im in images]
        maps: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape[1:], []).append(i)
        for idx in groups.values():
            out = self.session.run(None, {self.input_name: np.stack([inputs[i] for i in idx])})[0]
            for k, i in enumerate(idx):
                maps[i] = out[k, 0]
        return maps

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: ((N, 4, 2) float32 boxes in pixels, (N,) box scores)."""
        maps = self.probability_maps(images)
        return [
            boxes_from_probability_map(p, im.shape[0], im.shape[1], self.postprocess) for p, im in zip(maps, images)
        ]
