"""Pure rendering functions of AnyText2's training conditions (no randomness inside).

Every random choice the reference makes is passed in as a number drawn by the caller (``sample.py``),
so these functions are deterministic and can be compared with the reference draw for draw.
Everything is computed inside the polygon's bounding box and written into boolean canvases: the
reference renders each line on full-size float64 canvases, which is where its time goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .fonts import load_font

GLYPH_LINE_HW = (80, 512)
VERTICAL_ANGLE = 10  # degrees: boxes this close to axis-aligned and taller than wide are laid out vertically


# ----------------------------------------------------------------------------------------------
# glyph line (80x512): the text centred and scaled, as the OCR-style line encoder sees it
# ----------------------------------------------------------------------------------------------
def render_glyph_line(font_path: str, text: str) -> np.ndarray:
    """Binary (80, 512) image of ``text`` scaled to fill 90% of the line, centred."""
    H, W = GLYPH_LINE_HW
    base = 50
    left, top, right, bottom = load_font(font_path, base).getbbox(text)
    ratio = min(W * 0.9 / max(right - left, 5), H * 0.9 / max(bottom - top, 5))
    size = int(base * ratio)
    img = Image.new("1", (W, H), 0)
    if size >= 1:
        font = load_font(font_path, size)
        _, t2, r2, b2 = font.getbbox(text)
        # Pillow<10 getsize() = (right, bottom) and getoffset() = (left, top) of this bbox
        x = (W - r2) // 2
        y = (H - b2) // 2 - t2 // 2
        ImageDraw.Draw(img).text((x, y), text, font=font, fill=1)
    return np.asarray(img, dtype=bool)


# ----------------------------------------------------------------------------------------------
# glyph inside its polygon
# ----------------------------------------------------------------------------------------------
def _long_side_angle(box: np.ndarray) -> float:
    """Counter-clockwise angle (degrees, [-90, 90)) of the box's long side, as PIL.rotate expects.

    Independent of OpenCV's minAreaRect angle convention, which changed between the reference's
    OpenCV 4.7 and later releases (the reference's formula assumes 4.5.1-4.x).
    """
    e1 = box[1] - box[0]
    e2 = box[2] - box[1]
    e = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    a = math.degrees(math.atan2(-e[1], e[0]))
    while a >= 90:
        a -= 180
    while a < -90:
        a += 180
    return a


def min_area_rect_4x(pts):
    """cv2.minAreaRect in the OpenCV 4.5-4.x convention (angle in (0, 90]) the reference relies on.

    Newer OpenCV reports the same rectangle with angle in [-90, 0) and width/height swapped; the
    font-hint band starts from the end of the long axis that this convention picks.
    """
    c, (w, h), a = cv2.minAreaRect(pts)
    if a < 0:
        (w, h, a) = (w, h, 90.0) if a == -90 else (h, w, a + 90)
    return c, (w, h), a


def _insert_spaces(text: str, n: int) -> str:
    return (" " * n).join(text)


def _fit_font_size(font_path: str, text: str, max_dim: float, min_dim: float) -> int:
    """Largest size whose text bbox fits max_dim x min_dim (the reference's binary search)."""
    lo, hi = 1, min_dim
    while lo < hi:
        mid = (lo + hi) // 2
        l, t, r, b = load_font(font_path, int(mid)).getbbox(text)
        if r - l <= max_dim and b - t <= min_dim:
            lo = mid + 1
        else:
            hi = mid
    return int(hi - 1)


def _spread_horizontal(font, text: str, max_dim: float, min_dim: float) -> str:
    """Insert the most equal spaces between letters that still fit (the reference tries 1..99).

    Width grows monotonically with the number of spaces, so stepping from a linear estimate to the
    largest count that fits gives the same answer with 2-3 bbox queries instead of up to 99.
    """
    if len(text) < 2:
        return text

    def fits(n):
        l, t, r, b = font.getbbox(_insert_spaces(text, n))
        return r - l <= max_dim and b - t <= min_dim

    if fits(99):
        return text  # the reference never breaks out of its loop and keeps the text unchanged
    # answer = largest n in [0, 98] that fits; start from the linear estimate, then step to it
    l, _, r, _ = font.getbbox(text)
    adv = max(font.getlength(" "), 1e-3)
    n = int(min(max((max_dim - (r - l)) // (adv * (len(text) - 1)), 0), 98))
    while n < 98 and fits(n + 1):
        n += 1
    while n > 0 and not fits(n):
        n -= 1
    return _insert_spaces(text, n)


def _paste_local(out: np.ndarray, local: np.ndarray, ox: int, oy: int) -> None:
    """OR a local boolean patch into ``out`` at (ox, oy), clipped to the canvas."""
    H, W = out.shape
    h, w = local.shape
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + w, W), min(oy + h, H)
    if x0 < x1 and y0 < y1:
        out[y0:y1, x0:x1] |= local[y0 - oy : y1 - oy, x0 - ox : x1 - ox]


def _nonzero_after_paste(layer: Image.Image) -> np.ndarray:
    """Pixels that are non-zero once the RGBA layer is pasted on black (the reference's glyph test)."""
    base = Image.new("RGB", layer.size, (0, 0, 0))
    base.paste(layer, (0, 0), layer)
    return np.asarray(base).any(axis=2)


def render_glyph_in_polygon(
    out: np.ndarray,
    font_path: str,
    text: str,
    polygon: np.ndarray,
    color=(255, 255, 255),
    scale: int = 1,
) -> None:
    """Draw ``text`` fitted into the polygon's min-area rectangle, OR-ed into ``out`` (gH, gW) bool.

    Same layout as the reference: font size by binary search on the rectangle, letters spread by
    inserted spaces (horizontal) or extra line gaps (vertical), rotation about the rectangle centre
    with nearest resampling, vertical layout for tall near-axis-aligned boxes. A pixel counts as
    glyph where the reference's coloured rendering is non-zero.
    """
    color = np.asarray(color, dtype=np.int64)
    if color.mean() < 0:
        color = np.array([255, 255, 255])
    fill = tuple(int(c) for c in np.clip(color, 10, 255)) + (255,)
    H, W = out.shape
    poly = np.asarray(polygon, dtype=np.float32) * scale
    rect = cv2.minAreaRect(poly)
    box = np.intp(cv2.boxPoints(rect))
    w, h = rect[1]
    min_dim, max_dim = min(w, h), max(w, h)
    angle = _long_side_angle(cv2.boxPoints(rect))
    vert = False
    _w = int(box[:, 0].max() - box[:, 0].min())
    _h = int(box[:, 1].max() - box[:, 1].min())
    if abs(angle) % 90 < VERTICAL_ANGLE or abs(90 - abs(angle) % 90) % 90 < VERTICAL_ANGLE:
        if _h >= _w:
            vert, angle = True, 0.0
    size = _fit_font_size(font_path, text, max_dim, min_dim)
    if size < 1:
        return  # the reference's font_variant(size<=0) raises and it returns an empty glyph
    font = load_font(font_path, size)

    if vert:
        extra = 0
        heights = []
        for c in text:
            _, t, _, b = font.getbbox(c)
            heights.append(b - t)
        total = sum(heights)
        if total < max_dim and len(text) > 1:
            extra = int((max_dim - total) // (len(text) - 1))
        l, t, r, b = font.getbbox(text)
        x_s = int(box[:, 0].min() + _w // 2 - (b - t) // 2)
        y_s = int(box[:, 1].min())
        # extent of what will be drawn, then draw on a local canvas
        ys, bbs = [], []
        y = y_s
        for c, ch in zip(text, heights):
            ys.append(y)
            bbs.append(font.getbbox(c))
            y += ch + extra
        if not text:
            return
        x0 = x_s + min(bb[0] for bb in bbs) - 2
        x1 = x_s + max(bb[2] for bb in bbs) + 2
        y0 = min(yy + bb[1] for yy, bb in zip(ys, bbs)) - 2
        y1 = max(yy + bb[3] for yy, bb in zip(ys, bbs)) + 2
        ox, oy = int(x0), int(y0)
        layer = Image.new("RGBA", (max(int(x1 - ox), 1), max(int(y1 - oy), 1)), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for c, yy in zip(text, ys):
            draw.text((x_s - ox, yy - oy), c, font=font, fill=fill)
        _paste_local(out, _nonzero_after_paste(layer), ox, oy)
        return

    text = _spread_horizontal(font, text, max_dim, min_dim)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left, bottom - top
    cx, cy = rect[0]
    tx, ty = cx - tw / 2, cy - th / 2 - top
    # local square around the rectangle centre holding the text before and after rotation
    corners = [(tx + left, ty + top), (tx + right, ty + top), (tx + right, ty + bottom), (tx + left, ty + bottom)]
    R = int(math.ceil(max(math.hypot(x - cx, y - cy) for x, y in corners))) + 3
    ox, oy = int(math.floor(cx)) - R, int(math.floor(cy)) - R
    S = 2 * R + 2
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((tx - ox, ty - oy), text, font=font, fill=fill)
    if angle % 360.0 != 0.0:
        layer = layer.transform(
            (S, S), Image.Transform.AFFINE, _local_rotation(angle, (cx, cy), W, H, ox, oy), Image.Resampling.NEAREST
        )
    _paste_local(out, _nonzero_after_paste(layer), ox, oy)


def _local_rotation(angle: float, center, W: int, H: int, ox: int, oy: int) -> tuple:
    """Affine matrix of ``layer.rotate(angle, expand=1, center=center)`` on a W x H canvas followed by
    pasting it centred (the reference), re-expressed for a local canvas whose origin is (ox, oy)."""
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0, round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]

    def tf(x, y):
        return m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]

    m[2], m[5] = tf(-center[0], -center[1])
    m[2] += center[0]
    m[5] += center[1]
    xs, ys = zip(*(tf(x, y) for x, y in ((0, 0), (W, 0), (W, H), (0, H))))
    nw = math.ceil(max(xs)) - math.floor(min(xs))
    nh = math.ceil(max(ys)) - math.floor(min(ys))
    m[2], m[5] = tf(-(nw - W) / 2.0, -(nh - H) / 2.0)
    xo, yo = int((W - nw) / 2), int((H - nh) / 2)  # paste offset of the expanded layer
    c = m[0] * (ox - xo) + m[1] * (oy - yo) + m[2] - ox
    f = m[3] * (ox - xo) + m[4] * (oy - yo) + m[5] - oy
    return (m[0], m[1], c, m[3], m[4], f)


# ----------------------------------------------------------------------------------------------
# position mask, inv_mask
# ----------------------------------------------------------------------------------------------
def _bbox(pts: np.ndarray, pad: int, H: int, W: int):
    x0 = max(int(pts[:, 0].min()) - pad, 0)
    y0 = max(int(pts[:, 1].min()) - pad, 0)
    x1 = min(int(pts[:, 0].max()) + pad + 1, W)
    y1 = min(int(pts[:, 1].max()) + pad + 1, H)
    return x0, y0, x1, y1


def morph_op(u: float, small: bool) -> tuple:
    """The reference's random position-mask jitter for a uniform draw ``u``: (op, iterations).

    70% unchanged, 10% dilate, 10% erode, 5% dilate x2, 5% erode x2. For boxes under 20 px (at 512)
    erosion is skipped; note the reference's elif chain then turns the 10% "erode" slot into
    "dilate x2" and the 5% "erode x2" slot into "unchanged" - kept as is.
    """
    if u < 0.7:
        return ("none", 0)
    if u < 0.8:
        return ("dilate", 1)
    if u < 0.9 and not small:
        return ("erode", 1)
    if u < 0.95:
        return ("dilate", 2)
    if not small:
        return ("erode", 2)
    return ("none", 0)


def render_position(polygon: np.ndarray, size: int, morph_u: float | None) -> np.ndarray:
    """Filled polygon (size x size bool) with the random dilate/erode; ``morph_u=None`` = no mask drawn."""
    out = np.zeros((size, size), dtype=bool)
    if morph_u is None:
        return out
    pts = np.asarray(polygon, dtype=np.int32).reshape(-1, 2)
    (_, (w, h), _) = cv2.minAreaRect(pts)
    min_wh = 20 * size / 512
    op, it = morph_op(morph_u, w < min_wh or h < min_wh)
    x0, y0, x1, y1 = _bbox(pts, 3, size, size)
    if x0 >= x1 or y0 >= y1:
        return out
    local = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(local, [(pts - (x0, y0)).reshape(-1, 1, 2)], 1)
    if op != "none":
        k = np.ones((3, 3), np.uint8)
        # the crop keeps >= 3 px of background around the polygon, or the real image border, so
        # morphology on the crop equals morphology on the full canvas
        local = (cv2.dilate if op == "dilate" else cv2.erode)(local, k, iterations=it)
    out[y0:y1, x0:x1] = local.astype(bool)
    return out


def render_polygons(polygons, size: int) -> np.ndarray:
    """Union of filled polygons (the inv_mask)."""
    img = np.zeros((size, size), dtype=np.uint8)
    for p in polygons:
        cv2.fillPoly(img, [np.asarray(p, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return img.astype(bool)


# ----------------------------------------------------------------------------------------------
# font hint
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FontHintDraws:
    """Uniform [0,1) draws of one line's font hint, in the reference's order."""

    rotate: float = 0.5
    translate_x: float = 0.5
    translate_y: float = 0.5
    scale: float = 0.5
    area: float = 1.0
    start: float = 0.0


def _augment_crop(crop: np.ndarray, d: FontHintDraws) -> np.ndarray:
    """Random rotate (+-10 deg), translate (+-10 px), scale (0.9-1.1) with replicated borders."""
    h, w = crop.shape[:2]
    angle = -10 + 20 * d.rotate
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
    crop = cv2.warpAffine(crop, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    tx, ty = -10 + 20 * d.translate_x, -10 + 20 * d.translate_y
    M = np.float32([[1, 0, tx], [0, 1, ty]])
    crop = cv2.warpAffine(crop, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    s = 0.9 + 0.2 * d.scale
    sw, sh = int(w * s), int(h * s)
    if sw < 1 or sh < 1:
        return crop
    scaled = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_LINEAR)
    if s >= 1:
        return scaled[(sh - h) // 2 : (sh + h) // 2, (sw - w) // 2 : (sw + w) // 2]
    ph, pw = (h - sh) // 2, (w - sw) // 2
    return cv2.copyMakeBorder(scaled, ph, h - sh - ph, pw, w - sw - pw, cv2.BORDER_REPLICATE)


def render_font_hint(
    out: np.ndarray,
    image: np.ndarray,
    polygon: np.ndarray,
    draws: FontHintDraws,
    area_range=(1.0, 1.0),
    randaug: bool = False,
) -> None:
    """OR one line's font hint into ``out`` (H, W) bool.

    Font hint = dark strokes (adaptive threshold of the line's crop of the image, optionally
    jittered) inside the polygon, minus a band across the long axis that keeps only an
    ``area`` fraction of the line.
    """
    H, W = out.shape
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).copy()
    pts[:, 0] = np.clip(pts[:, 0], 0, W - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, H - 1)
    pts = pts.astype(np.int32)
    x, y, w, h = cv2.boundingRect(pts)
    if w < 1 or h < 1:
        return
    (center, (rw, rh), rangle) = min_area_rect_4x(pts)
    crop = np.ascontiguousarray(image[y : y + h, x : x + w])
    if randaug:
        crop = _augment_crop(crop, draws)
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    strokes = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 11, 2) == 0

    region = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(region, [(pts - (x, y)).reshape(-1, 1, 2)], 1)
    # remove a band along the long axis so that only `area_ratio` of the line stays
    area_ratio = area_range[0] + (area_range[1] - area_range[0]) * draws.area
    long_side, short_side = max(rw, rh), min(rw, rh)
    band = long_side * (1 - area_ratio)
    a = np.radians(rangle)
    v = np.array([np.cos(a), np.sin(a)])
    if rw < rh:
        v = np.array([-v[1], v[0]])
    start = (long_side - band) * draws.start
    c0 = np.asarray(center) - v * (long_side / 2 - start) + v * (band / 2)
    half = v * (band / 2)
    n = np.array([-v[1], v[0]]) * (short_side / 2)
    corners = np.array([c0 - half - n, c0 + half - n, c0 + half + n, c0 - half + n], dtype=np.int32)
    cv2.fillPoly(region, [(corners - (x, y)).reshape(-1, 1, 2)], 0)
    out[y : y + h, x : x + w] |= region.astype(bool) & strokes
