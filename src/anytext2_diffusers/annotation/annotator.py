"""Images -> AnyWord line annotations: PP-OCRv3 detection, then the recognizer on the training crops."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..models.ocr import (
    SecondLookConfig,
    crop_line_by_polygon,
    ctc_greedy_decode_with_scores,
    look_again,
    merge_line_fragments,
    paddle_resize_norm,
    prepare_crops,
    rotate_if_vertical,
)
from ..models.ocr.crop import order_box_points

# CJK Unified Ideographs (+ extension A, compatibility ideographs, extensions B-F).
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
DROP_REASONS = ("empty", "low_score", "too_short", "too_small", "max_lines")


def line_language(text: str) -> str:
    """AnyWord's two scripts: ``Chinese`` when the line holds a CJK ideograph, else ``Latin``."""
    return "Chinese" if _CJK.search(text) else "Latin"


@dataclass
class AnnotateConfig:
    """Line filters and batching (the ``anytext2-annotate`` options of the same names)."""

    min_score: float = 0.6
    # Readings with fewer characters (spaces not counted) are dropped: one-character readings are
    # mostly pieces of a word the detector split, and RapidOCR 1.2.3 never keeps one (docs/own_data.md).
    min_chars: int = 2
    min_box_px: float = 8.0
    max_lines: int = 20
    languages: str = "auto"  # "auto" (per line), or "Chinese" / "Latin" for every line
    batch_size: int = 16  # recognizer crops per forward pass
    device: str = "cpu"
    # Detector settings: RapidOCR 1.2.3's (measured better than PaddleOCR's 960 / max / 0.6 / 1.5 / no
    # dilation on small images and steep lines: docs/own_data.md); the binarisation threshold is 0.3 in both.
    det_limit_side_len: int = 736
    det_limit_type: str = "min"  # see detection.resize_for_detection
    det_box_thresh: float = 0.5
    det_unclip_ratio: float = 1.6
    det_use_dilation: bool = True
    # Join boxes that are pieces of one line before reading (models.ocr.merge_line_fragments): the
    # pieces are otherwise read as words of their own (docs/own_data.md).
    det_merge_fragments: bool = True
    # Channel order of detector input and crops: BGR, as PaddleOCR reads (its models were trained on cv2
    # images); False feeds RGB, as RapidOCR 1.2.3 does (measured both ways in docs/own_data.md).
    rec_bgr: bool = True
    det_bgr: bool = True
    # Detector test-time ensemble: the pixel-wise maximum of the probability maps for BGR and RGB input
    # (two detector passes); found more lines on the six accuracy sets of docs/own_data.md.
    det_both_orders: bool = True
    # A second detector look at each steep box (20-70 degrees), its neighbourhood turned horizontal: the
    # box is replaced by the line found there when that holds it and is at least 1.2x as long
    # (models.ocr.look_again); it completes steep words whose end letters the first map lost.
    det_second_look: bool = True
    # Reader test-time ensemble: each box is also read with this much more margin (fractions of its
    # height added on every side, the box itself always read), and the most confident reading is kept;
    # a box edge that clips a letter (`akery` for `bakery`) is read whole from the wider crop. The
    # polygon written stays the detector's box. () reads the box only.
    rec_margins: tuple[float, ...] = (0.1,)
    # Reader input: "torch" is the training's resize (torch bilinear, 64-pixel canvas steps); "paddle" is
    # PaddleOCR's inference preprocessing (uint8 crop, cv2 resize, per-crop canvas:
    # models.ocr.paddle_resize_norm). Measured no better on the accuracy sets (docs/own_data.md).
    rec_input: str = "torch"

    def __post_init__(self):
        if self.languages not in ("auto", "Chinese", "Latin"):
            raise ValueError(f"languages must be 'auto', 'Chinese' or 'Latin', got {self.languages!r}")
        if self.rec_input not in ("paddle", "torch"):
            raise ValueError(f"rec_input must be 'paddle' or 'torch', got {self.rec_input!r}")
        self.rec_margins = tuple(float(m) for m in self.rec_margins)
        if any(not 0 < m <= 1 for m in self.rec_margins):
            raise ValueError(f"rec_margins must be in (0, 1] (fractions of the box height), got {self.rec_margins}")
        if self.max_lines < 1 or self.batch_size < 1 or self.min_chars < 1:
            raise ValueError("max_lines, batch_size and min_chars must be at least 1")


@dataclass
class ImageAnnotation:
    """Kept lines (AnyWord annotation dicts, reading order) and dropped lines counted by reason."""

    annotations: list[dict]
    dropped: Counter = field(default_factory=Counter)


def _canvas_ratio(crop: torch.Tensor, base_ratio: float) -> float:
    """Recognizer canvas width / height for one crop: the fixed 320/48 canvas, widened in 64-pixel
    steps for longer lines (PaddleOCR widens to the batch's widest line; a per-crop bucket keeps each
    crop's input, and so its reading, independent of the other images in the batch)."""
    r = rotate_if_vertical(crop)
    ratio = r.shape[2] / float(r.shape[1])
    if ratio <= base_ratio:
        return base_ratio
    return math.ceil(ratio * 48 / 64) * 64 / 48


def _paddle_inputs(crops: list[torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
    """PaddleOCR's inference input per crop: the crop as uint8 (what its crop step hands the reader),
    turned if vertical, then ``paddle_resize_norm``."""
    out = []
    for c in crops:
        hwc = rotate_if_vertical(c).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.append(torch.from_numpy(paddle_resize_norm(np.ascontiguousarray(hwc), height, width)))
    return out


@torch.no_grad()
def read_crops(
    recognizer, crops: list[torch.Tensor], batch_size: int = 16, bgr: bool = True, rec_input: str = "torch"
) -> tuple[list[str], list[float]]:
    """Texts and confidences of upright RGB crops (CHW, 0..255), batched by canvas width; ``bgr``
    flips them to BGR first (PaddleOCR's order); ``rec_input`` as ``AnnotateConfig.rec_input``."""
    if not crops:
        return [], []
    if bgr:
        crops = [c.flip(0) for c in crops]
    height, width = recognizer.config.image_height, recognizer.config.image_width
    if rec_input == "paddle":
        inputs = _paddle_inputs(crops, height, width)
        ratios = [x.shape[2] / height for x in inputs]
    else:
        base = width / height
        ratios = [_canvas_ratio(c, base) for c in crops]
    device = next(recognizer.parameters()).device
    texts: list[str] = [""] * len(crops)
    scores: list[float] = [0.0] * len(crops)
    for ratio in sorted(set(ratios)):
        idx = [i for i, r in enumerate(ratios) if r == ratio]
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            if rec_input == "paddle":
                pixels = torch.stack([inputs[i] for i in chunk]).to(device)
            else:
                pixels = prepare_crops([crops[i] for i in chunk], height, width, ratio)
            logits = recognizer(pixels).logits
            t, s = ctc_greedy_decode_with_scores(logits, recognizer.characters)
            for i, ti, si in zip(chunk, t, s):
                texts[i], scores[i] = ti, si
    return texts, scores


def _short_side(box: np.ndarray) -> float:
    return float(min(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[0] - box[3])))


def widen_box(box: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """The box's min-area rectangle grown by ``margin`` x its shorter side on every side, in its own
    frame (any angle), corners clipped to the image; ordered as ``order_box_points``."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(np.asarray(box, dtype=np.float32))
    d = margin * min(w, h)
    grown = cv2.boxPoints(((cx, cy), (w + 2 * d, h + 2 * d), angle))
    grown[:, 0] = np.clip(grown[:, 0], 0, width - 1)
    grown[:, 1] = np.clip(grown[:, 1], 0, height - 1)
    return order_box_points(grown)


class Annotator:
    """Detect, crop (``crop_line_by_polygon``, the training crop), read, filter.

    ``detector``: a ``PPOCRDetector`` (default: the PP-OCRv3 ONNX from rapidocr-onnxruntime);
    ``recognizer``: a ``PPOCRRecognizer`` (default: converted from the same package's ONNX).
    """

    def __init__(self, config: AnnotateConfig | None = None, detector=None, recognizer=None):
        from ..models.ocr import DBPostProcessConfig, PPOCRDetector, convert_onnx

        self.config = config or AnnotateConfig()
        self.detector = (
            detector
            if detector is not None
            else PPOCRDetector(
                device=self.config.device,
                limit_side_len=self.config.det_limit_side_len,
                limit_type=self.config.det_limit_type,
                bgr=self.config.det_bgr,
                both_orders=self.config.det_both_orders,
                postprocess=DBPostProcessConfig(
                    box_thresh=self.config.det_box_thresh,
                    unclip_ratio=self.config.det_unclip_ratio,
                    use_dilation=self.config.det_use_dilation,
                ),
            )
        )
        self.second_look = SecondLookConfig()
        recognizer = recognizer if recognizer is not None else convert_onnx()
        self.recognizer = recognizer.to(self.config.device).eval()
        if self.recognizer.characters is None:
            raise ValueError("the recognizer has no character table (config.characters); it cannot read text")

    def __call__(self, images: list[np.ndarray]) -> list[ImageAnnotation]:
        """RGB uint8 (H, W, 3) images -> one ``ImageAnnotation`` each."""
        cfg = self.config
        detections = self.detector(images) if images else []
        crops, owners, results = [], [], []
        for k, (image, (boxes, _)) in enumerate(zip(images, detections)):
            dropped: Counter = Counter()
            if cfg.det_merge_fragments and len(boxes) > 1:
                boxes = merge_line_fragments(boxes)
            kept = []
            for box in boxes:
                if _short_side(box) < cfg.min_box_px:
                    dropped["too_small"] += 1
                else:
                    kept.append(box)
            if len(kept) > cfg.max_lines:  # keep the largest lines, in reading order
                areas = [np.linalg.norm(b[0] - b[1]) * np.linalg.norm(b[0] - b[3]) for b in kept]
                top = sorted(np.argsort(areas, kind="stable")[::-1][: cfg.max_lines])
                dropped["max_lines"] += len(kept) - cfg.max_lines
                kept = [kept[i] for i in top]
            # After the --max_lines cut, so an image costs at most that many second looks; it needs the
            # detector itself (a stand-in without probability maps skips it).
            if cfg.det_second_look and kept and hasattr(self.detector, "probability_maps"):
                looked, replaced = look_again(self.detector, image, np.stack(kept), self.second_look)
                if replaced and cfg.det_merge_fragments and len(looked) > 1:
                    looked = merge_line_fragments(looked)  # two pieces of one word may now be the same line
                kept = list(looked)
            results.append(ImageAnnotation([], dropped))
            if kept:
                pixels = image if image.flags.writeable else image.copy()
                tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(self.config.device, torch.float32)
                h, w = image.shape[:2]
                for box in kept:
                    crops.append(crop_line_by_polygon(tensor, box))
                    crops.extend(crop_line_by_polygon(tensor, widen_box(box, m, h, w)) for m in cfg.rec_margins)
                    owners.append((k, box))
        texts, scores = read_crops(self.recognizer, crops, cfg.batch_size, cfg.rec_bgr, cfg.rec_input)
        views = 1 + len(cfg.rec_margins)
        readings = [
            max(zip(texts[i : i + views], scores[i : i + views]), key=lambda ts: ts[1])  # first wins a tie
            for i in range(0, len(texts), views)
        ]
        for (k, box), (text, score) in zip(owners, readings):
            text = text.strip()
            if not text:
                results[k].dropped["empty"] += 1
                continue
            if score < cfg.min_score:
                results[k].dropped["low_score"] += 1
                continue
            if len(text.replace(" ", "")) < cfg.min_chars:
                results[k].dropped["too_short"] += 1
                continue
            language = line_language(text) if cfg.languages == "auto" else cfg.languages
            results[k].annotations.append(
                {
                    "polygon": np.round(box).astype(int).tolist(),
                    "text": text,
                    "language": language,
                    "valid": True,
                    "score": round(score, 4),
                }
            )
        return results
