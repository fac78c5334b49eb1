"""Cut a text line out of an image, upright, differentiably (AnyText2's ``crop_image``).

The line's minimum-area rectangle (from its position mask, or from a polygon) is mapped onto an
axis-aligned box by a similarity transform estimated with Umeyama's method; the image is resampled
with ``affine_grid``/``grid_sample`` so gradients reach the image (the OCR losses need that).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# What the reference substitutes when a mask has no contour.
FALLBACK_BOX = np.array([[0, 0], [100, 0], [100, 100], [0, 100]])


def umeyama_similarity(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto
    ``dst`` (Umeyama 1991, eq. 39-42), as a 3x3 homogeneous matrix."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    out = np.eye(dim + 1, dtype=np.float64)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return np.full_like(out, np.nan)
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rot = u @ vt
    elif rank == dim - 1:
        d = signs.copy()
        d[-1] = -1
        rot = u @ np.diag(d) @ vt
    else:
        rot = u @ np.diag(signs) @ vt
    scale = (s @ signs) / src_c.var(axis=0).sum() if estimate_scale else 1.0
    out[:dim, :dim] = rot
    out[:dim, dim] = dst_mean - scale * (rot @ src_mean)
    out[:dim, :dim] *= scale
    return out


def order_box_points(box: np.ndarray) -> np.ndarray:
    """Corners as [top-left, top-right, bottom-right, bottom-left]: the two leftmost are the left
    side (ties keep their order), each side sorted by y."""
    pts = sorted(np.asarray(box), key=lambda p: p[0])
    tl, bl = sorted(pts[:2], key=lambda p: p[1])
    tr, br = sorted(pts[2:], key=lambda p: p[1])
    return np.array([tl, tr, br, bl])


def _as_binary_mask(mask) -> np.ndarray:
    """bool / 0..1 float / 0..255 integer mask, (H, W) or (H, W, 1) or (1, H, W) -> uint8 {0, 255}.

    Floats follow the reference's ``(mask * 255).astype(uint8) > 127``; integers its ``> 127``."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim == 3:
        if m.shape[-1] == 1:
            m = m[..., 0]
        elif m.shape[0] == 1:
            m = m[0]
        else:
            m = m[..., 0]  # the reference thresholds and then keeps channel 0
    if m.ndim != 2:
        raise ValueError(f"position mask must be (H, W), (H, W, 1) or (1, H, W), got shape {np.shape(mask)}")
    if m.dtype == bool:
        on = m
    elif np.issubdtype(m.dtype, np.floating):
        on = np.clip(m * 255.0, 0, 255).astype(np.uint8) > 127
    else:
        on = m > 127
    return on.astype(np.uint8) * 255


def min_area_box_from_mask(mask) -> np.ndarray:
    """Ordered integer corners of the min-area rectangle around the mask's largest outer contour."""
    binary = _as_binary_mask(mask)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        warnings.warn("empty position mask: using the reference's fallback box (0,0)-(100,100)", stacklevel=2)
        return FALLBACK_BOX.copy()
    largest = max(contours, key=cv2.contourArea)
    box = cv2.boxPoints(cv2.minAreaRect(largest)).astype(np.int64)  # truncation, as the reference's np.int0
    return order_box_points(box)


def min_area_box_from_polygon(polygon) -> np.ndarray:
    """Ordered float corners of the min-area rectangle around a (K, 2) polygon in pixel coordinates."""
    pts = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(pts)}")
    return order_box_points(cv2.boxPoints(cv2.minAreaRect(pts)))


def rectify_box(image: torch.Tensor, box: np.ndarray, clamp: tuple[float, float] | None = (0.0, 255.0)) -> torch.Tensor:
    """Resample the quadrilateral ``box`` (tl, tr, br, bl) of a CHW image into an upright
    (C, height, width) crop, width/height being the longer opposite sides.

    Like the reference, pixel coordinates are normalised by the image size (not size - 1) while the
    grid uses ``align_corners=True``; the sampling grid is only built for the output region.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be CHW, got shape {tuple(image.shape)}")
    src = np.asarray(box, dtype=np.float32)
    width = max(np.linalg.norm(src[0] - src[1]), np.linalg.norm(src[2] - src[3]))
    height = max(np.linalg.norm(src[0] - src[3]), np.linalg.norm(src[1] - src[2]))
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    sim = umeyama_similarity(src, dst, estimate_scale=True)
    h_img, w_img = image.shape[1:]
    norm = np.array([[2.0 / w_img, 0, -1], [0, 2.0 / h_img, -1], [0, 0, 1]])
    theta = np.linalg.inv(norm @ sim @ np.linalg.inv(norm))[:2]
    theta = torch.from_numpy(theta).to(device=image.device, dtype=torch.float32)
    out_h = max(1, min(int(height), h_img))
    out_w = max(1, min(int(width), w_img))
    # affine_grid(align_corners=True) samples linspace(-1, 1, size); keep only the rows/columns we keep.
    ys = torch.linspace(-1, 1, h_img, device=image.device)[:out_h]
    xs = torch.linspace(-1, 1, w_img, device=image.device)[:out_w]
    base = torch.stack(
        [xs.expand(out_h, out_w), ys[:, None].expand(out_h, out_w), torch.ones(out_h, out_w, device=image.device)],
        dim=-1,
    )
    grid = (base.reshape(1, -1, 3) @ theta.t()).reshape(1, out_h, out_w, 2)
    out = F.grid_sample(image.unsqueeze(0), grid.to(image.dtype), mode="bilinear", align_corners=True)[0]
    if clamp is not None:
        out = out.clamp(*clamp)
    return out


def crop_line_by_mask(image: torch.Tensor, mask) -> torch.Tensor:
    """Upright crop (C, h, w) of the line whose position mask is ``mask``; image CHW in 0..255."""
    return rectify_box(image, min_area_box_from_mask(mask))


def crop_line_by_polygon(image: torch.Tensor, polygon) -> torch.Tensor:
    """Upright crop (C, h, w) of the min-area rectangle of a (K, 2) pixel polygon; image CHW in 0..255."""
    return rectify_box(image, min_area_box_from_polygon(polygon))


def crop_lines(images: torch.Tensor, positions, n_lines: Sequence[int]) -> list[torch.Tensor]:
    """Crops of every valid line, sample-major (s0l0, s0l1, s1l0, ...), as AnyText2's losses order them.

    ``images``: (B, C, H, W) in 0..255; ``positions``: (B, L, H, W) / (B, L, 1, H, W) masks (or a list
    over samples of per-line masks); ``n_lines[b]`` lines of sample b are used.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    crops = []
    for b in range(images.shape[0]):
        for j in range(int(n_lines[b])):
            crops.append(crop_line_by_mask(images[b], positions[b][j]))
    return crops
