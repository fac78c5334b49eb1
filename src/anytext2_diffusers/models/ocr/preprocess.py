"""Text-line crops -> recognizer input, exactly as AnyText2's ``TextRecognizer`` prepares them.

Crops are CHW float tensors in 0..255 of any size. Every step is a torch op, so the input stays
differentiable w.r.t. the crop (the OCR losses back-propagate through it) and runs on any device.
``paddle_resize_norm`` is the exception: PaddleOCR's own inference input (cv2 on a uint8 crop), for
reading labels where no gradient is needed (the annotator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def to_chw_tensor(crop) -> torch.Tensor:
    """PIL image, HxW / HxWx3 (HxWx4: alpha dropped) array, or CHW tensor -> CHW float32 tensor in 0..255."""
    if isinstance(crop, torch.Tensor):
        if crop.ndim != 3:
            raise ValueError(f"tensor crops must be CHW, got shape {tuple(crop.shape)}")
        return crop if crop.is_floating_point() else crop.float()
    try:
        from PIL import Image

        if isinstance(crop, Image.Image):
            crop = np.asarray(crop.convert("RGB"))
    except ImportError:  # pragma: no cover - pillow is a core dependency
        pass
    arr = np.asarray(crop)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"array crops must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    return torch.from_numpy(np.array(arr[:, :, :3], dtype=np.float32)).permute(2, 0, 1)


def rotate_if_vertical(crop: torch.Tensor) -> torch.Tensor:
    """Lines taller than 1.2x their width are turned 90 degrees counter-clockwise (AnyText2's rule)."""
    h, w = crop.shape[1:]
    if h > w * 1.2:
        return torch.transpose(crop, 1, 2).flip(dims=[1])
    return crop


def resize_norm_crop(
    crop: torch.Tensor, image_height: int = 48, image_width: int = 320, max_wh_ratio: float | None = None
) -> torch.Tensor:
    """Resize to ``image_height`` keeping the aspect ratio (width capped), map 0..255 -> [-1, 1], pad
    the right side with zeros up to the canvas width (``image_height * max_wh_ratio``)."""
    if max_wh_ratio is None:
        max_wh_ratio = image_width / image_height
    canvas_w = int(image_height * max_wh_ratio)
    h, w = crop.shape[1:]
    if h == 0 or w == 0:
        raise ValueError(f"cannot recognise an empty crop of shape {tuple(crop.shape)}")
    target_w = math.ceil(image_height * (w / float(h)))
    resized_w = canvas_w if target_w > canvas_w else int(target_w)
    resized = F.interpolate(crop.unsqueeze(0), size=(image_height, resized_w), mode="bilinear", align_corners=True)
    resized = (resized / 255.0 - 0.5) / 0.5
    return F.pad(resized[0], (0, canvas_w - resized_w))


def paddle_resize_norm(crop: np.ndarray, image_height: int = 48, image_width: int = 320) -> np.ndarray:
    """PaddleOCR's recognizer input at inference (``TextRecognizer.resize_norm_img`` in
    ``tools/infer/predict_rec.py``) for one upright uint8 (H, W, C) crop: cv2 bilinear resize to
    ``image_height`` keeping the aspect ratio, (x / 255 - 0.5) / 0.5, zero-padded on the right to a canvas
    ``int(image_height * max(image_width / image_height, w / h))`` wide. Returns float32 (C, H, canvas).

    PaddleOCR takes the canvas ratio from the widest crop of the batch; here it is the crop's own, so a
    reading never depends on the other crops of a batch.
    """
    if crop.dtype != np.uint8 or crop.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) crop, got {crop.dtype} of shape {crop.shape}")
    h, w = crop.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot recognise an empty crop of shape {crop.shape}")
    ratio = w / float(h)
    canvas_w = int(image_height * max(image_width / image_height, ratio))
    resized_w = min(canvas_w, int(math.ceil(image_height * ratio)))
    resized = cv2.resize(crop, (resized_w, image_height), interpolation=cv2.INTER_LINEAR)
    resized = resized.reshape(image_height, resized_w, -1).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((crop.shape[2], image_height, canvas_w), dtype=np.float32)
    out[:, :, :resized_w] = (resized - 0.5) / 0.5
    return out


@dataclass
class RecognitionResult:
    """``logits`` / ``neck`` in the caller's crop order; ``pixel_values`` is the network input in the
    processing order ``order`` (crops sorted by aspect ratio, as AnyText2 batches them)."""

    logits: torch.Tensor
    neck: torch.Tensor
    pixel_values: torch.Tensor
    order: torch.Tensor


def sort_order(crops: Sequence[torch.Tensor]) -> np.ndarray:
    """Processing order: ascending width/height of the crops as given (before any rotation)."""
    return np.argsort(np.array([c.shape[2] / float(c.shape[1]) for c in crops]))


def prepare_crops(
    crops: Sequence[torch.Tensor], image_height: int = 48, image_width: int = 320, max_wh_ratio: float | None = None
) -> torch.Tensor:
    """(N, C, image_height, canvas width) recognizer input, in the order given."""
    if len(crops) == 0:
        raise ValueError("no crops to prepare")
    return torch.stack(
        [resize_norm_crop(rotate_if_vertical(c), image_height, image_width, max_wh_ratio) for c in crops]
    )


def recognize_crops(
    model, crops: Sequence[torch.Tensor], batch_size: int = 6, dynamic_width: bool = False
) -> RecognitionResult:
    """Run ``model`` on crops the way AnyText2's ``pred_imglist`` does: sort by aspect ratio, rotate
    vertical lines, batches of ``batch_size`` (6 in AnyText2; it matters only for a model in train
    mode, whose BatchNorm then uses per-batch statistics), results returned in the input order.

    ``dynamic_width`` widens the canvas to the widest line (PaddleOCR's inference rule) instead of
    squeezing long lines into the fixed width; AnyText2 training never does this.
    """
    if len(crops) == 0:
        raise ValueError("no crops to recognise")
    height, width = model.config.image_height, model.config.image_width
    ratio = width / height
    if dynamic_width:
        for c in crops:
            r = rotate_if_vertical(c)
            ratio = max(ratio, r.shape[2] / float(r.shape[1]))
    order = sort_order(crops)
    inputs, logits, necks = [], [], []
    for start in range(0, len(crops), batch_size):
        idx = order[start : start + batch_size]
        batch = prepare_crops([crops[i] for i in idx], height, width, ratio)
        out = model(batch)
        inputs.append(batch)
        logits.append(out.logits)
        necks.append(out.neck)
    pixel_values = torch.cat(inputs)
    inverse = torch.from_numpy(np.argsort(order)).to(pixel_values.device)
    return RecognitionResult(
        logits=torch.cat(logits)[inverse],
        neck=torch.cat(necks)[inverse],
        pixel_values=pixel_values,
        order=torch.from_numpy(order),
    )
