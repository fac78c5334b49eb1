"""User inputs of ``AnyText2Pipeline`` -> the data module's ``Batch`` (pure numpy/cv2, no models).

What the reference demo does before sampling (``ms_wrapper.py``), as small functions:

* lines quoted in a prompt become ``*`` placeholders (:func:`parse_quoted_texts`);
* a position image is split into one blob per line, ordered top-to-bottom then left-to-right in
  rows of ``gap`` pixels (:func:`separate_blobs`), and each blob's outline becomes the polygon the glyph is
  fitted into (:func:`find_polygon`);
* edit images are scaled so the long side is at most 1024 and then cropped down to multiples of 64
  (:func:`edit_size`);
* each line is rendered with the default font (glyph line and glyph in its polygon) and, when a font is
  given, with that font into the font hint (:func:`build_batch`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from ..data import render
from ..data.batch import UNSPECIFIED_COLOR, Batch, pack_bits
from ..data.fonts import BUNDLED_FONT_DIR, DEFAULT_FONT, load_font, missing_chars

logger = logging.getLogger(__name__)

PLACEHOLDER = "*"
MAX_CHARS = 20  # reference max_chars: longer lines are cut
MIN_BLOB_AREA = 20  # reference separate_pos_imgs: smaller components are noise
SORT_GAP = 102  # reference separate_pos_imgs: blobs whose centres are in the same 102 px band form a row
SIZE_MULTIPLE = 64  # latent / 8 must survive the UNet's three downsamplings
EDIT_MAX_LENGTH = 1024  # reference demo: resize_image(edit_image, max_length=1024)
DEFAULT_TEXT_CAPTION_PHRASE = "Text says "  # the data module's first TEXT_CAPTION_PHRASES entry
# Fonts tried, in order, for the glyph line / glyph of a line when the user names none; the reference
# renders every line with Arial Unicode, which the package cannot ship.
DEFAULT_GLYPH_FONTS = (DEFAULT_FONT, "NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf", "DejaVuSans.ttf")


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def parse_quoted_texts(prompt: str, placeholder: str = PLACEHOLDER) -> tuple[str, list[str]]:
    """``'a sign that reads "Hello", "World"'`` -> ``('a sign that reads *, *', ['Hello', 'World'])``.

    Curly quotes count as straight ones (reference ``modify_prompt``).
    """
    prompt = prompt.replace("\u201c", '"').replace("\u201d", '"')
    texts = re.findall(r'"(.*?)"', prompt)
    for t in texts:
        prompt = prompt.replace(f'"{t}"', placeholder, 1)
    return prompt, texts


def default_text_caption(n_lines: int, placeholder: str = PLACEHOLDER) -> str:
    """The text caption the reference's eval script builds (``get_text_caption``), with a fixed phrase."""
    return DEFAULT_TEXT_CAPTION_PHRASE + " , ".join([placeholder] * n_lines) + " . "


# ------------------------------------------------------------------------------------------------
# images and masks
# ------------------------------------------------------------------------------------------------
def to_uint8_hwc(image, name: str = "image") -> np.ndarray:
    """PIL / HxW(xC) array (uint8, or float in [0, 1]) / CxHxW or HxWxC tensor -> uint8 HxWx3 RGB."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected an HxW or HxWxC image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        else:
            arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def to_binary_mask(mask, name: str = "positions") -> np.ndarray:
    """bool HxW from a bool/uint8/float mask or image (white = position).

    uint8 images count a pixel only at 255, as the reference's ``threshold(254)`` does; bool and float
    masks count anything above one half.
    """
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    elif isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # colour image: the reference reads channel 0
        arr = arr[..., 0] if arr.shape[-1] in (1, 3, 4) else arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an HxW mask, got shape {np.shape(mask)}")
    if arr.dtype == bool:
        return arr.copy()
    if arr.dtype == np.uint8:
        if arr.size and arr.max() == 1:
            raise ValueError(
                f"{name}: a uint8 mask counts only pixels of 255 (the reference's threshold) and this one holds 0/1 "
                "values: pass mask * 255 or a bool mask"
            )
        return arr > 254
    return arr.astype(np.float32) > 0.5


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    resized = cv2.resize(mask.astype(np.uint8) * 255, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return resized > 254


def separate_blobs(mask: np.ndarray, sort_priority: str = "vertical", gap: int = SORT_GAP) -> list[np.ndarray]:
    """Split a position mask into one bool mask per connected blob, in line order.

    Order rule (reference ``separate_pos_imgs``): blobs are sorted by ``(cy // gap, cx // gap)`` of their
    centroids, i.e. row bands of ``gap`` pixels from top to bottom, left to right within a band
    (``sort_priority="horizontal"``: column bands from left to right, top to bottom within a band).
    Components smaller than 20 pixels are ignored.
    """
    if sort_priority not in ("vertical", "horizontal"):
        raise ValueError(f"sort_priority must be 'vertical' or 'horizontal', got {sort_priority!r}")
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    blobs = []
    for label in range(1, n):
        if stats[label, cv2.CC_STAT_AREA] < MIN_BLOB_AREA:
            continue
        blobs.append((labels == label, centroids[label]))
    first, second = (1, 0) if sort_priority == "vertical" else (0, 1)
    blobs.sort(key=lambda b: (b[1][first] // gap, b[1][second] // gap))
    return [b[0] for b in blobs]


def find_polygon(mask: np.ndarray) -> np.ndarray:
    """Polygon (N, 2) int32 approximating the largest outline of ``mask`` (1% of its perimeter)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise ValueError("positions: a line's mask is empty")
    contour = max(contours, key=cv2.contourArea)
    poly = cv2.approxPolyDP(contour, 0.01 * cv2.arcLength(contour, True), True)
    return poly.reshape(-1, 2).astype(np.int32)


def polygon_mask(polygon, hw: tuple[int, int]) -> np.ndarray:
    out = np.zeros(hw, np.uint8)
    cv2.fillPoly(out, [np.asarray(polygon, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return out.astype(bool)


def edit_size(height: int, width: int, max_length: int = EDIT_MAX_LENGTH) -> tuple[int, int]:
    """(H, W) the reference resizes an edit image to: long side scaled down to ``max_length`` (rounded),
    then each side cut down to a multiple of 64."""
    if max(height, width) > max_length:
        s = max_length / max(height, width)
        height, width = int(round(height * s)), int(round(width * s))
    return height - height % SIZE_MULTIPLE, width - width % SIZE_MULTIPLE


def default_glyph_font(text: str) -> str:
    """The first bundled font that draws every character of ``text``."""
    paths = [str(BUNDLED_FONT_DIR / f) for f in DEFAULT_GLYPH_FONTS]
    for p in paths:
        if not missing_chars(p, text):
            return p
    logger.warning("no bundled font draws all of %r; characters will be missing from its glyphs", text)
    return paths[0]


# ------------------------------------------------------------------------------------------------
# lines
# ------------------------------------------------------------------------------------------------
@dataclass
class Line:
    """One line to write: its text, where (mask + polygon) and how (font file / hint crop, colour)."""

    text: str
    position: np.ndarray  # bool HxW
    polygon: np.ndarray  # int32 (N, 2)
    font: str | None = None  # font file: rendered into the font hint
    font_hint_crop: np.ndarray | None = None  # bool h x w: strokes of an example of the wanted font
    color: tuple[int, int, int] = (UNSPECIFIED_COLOR,) * 3


def positions_to_masks(positions, hw: tuple[int, int], sort_priority: str = "vertical") -> list[np.ndarray]:
    """Per-line bool masks from one mask image (split into blobs), a list of masks, or a list of polygons."""
    if positions is None:
        return []
    if isinstance(positions, (list, tuple)):
        masks = []
        for i, p in enumerate(positions):
            arr = p if isinstance(p, (Image.Image, torch.Tensor)) else np.asarray(p)
            if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.shape[1] == 2 and arr.shape != hw:
                if arr.shape[0] < 3:
                    raise ValueError(f"positions[{i}]: a polygon needs at least 3 points, got {arr.shape[0]}")
                masks.append(polygon_mask(arr, hw))  # an (N, 2) polygon in pixels (x, y)
            else:
                m = to_binary_mask(arr, f"positions[{i}]")
                if m.shape != hw:
                    raise ValueError(f"positions[{i}]: mask is {m.shape[0]}x{m.shape[1]}, the image is {hw[0]}x{hw[1]}")
                masks.append(m)
        return masks
    mask = to_binary_mask(positions)
    if mask.shape != hw:
        raise ValueError(
            f"positions: mask is {mask.shape[0]}x{mask.shape[1]} but the image is {hw[0]}x{hw[1]}"
            " (edit mode resizes it to the image; in generate mode pass height/width or a mask of that size)"
        )
    return separate_blobs(mask, sort_priority)


def make_lines(
    texts: Sequence[str],
    masks: Sequence[np.ndarray],
    fonts: Sequence | None = None,
    colors: Sequence | None = None,
    max_chars: int = MAX_CHARS,
) -> tuple[list[Line], list[np.ndarray]]:
    """Pair texts with masks in order; returns the lines and the masks left over (positions without text).

    Raises ``ValueError`` for more texts than masks, an empty mask or a bad colour.
    """
    texts = list(texts)
    if len(texts) > len(masks):
        raise ValueError(
            f"{len(texts)} text lines but {len(masks)} position blobs: give one blob (or mask, or polygon) per"
            " line; blobs smaller than 20 pixels are ignored"
        )
    if len(masks) > len(texts) and texts:
        logger.warning(
            "%d position blobs for %d lines: the extra blobs are kept as positions without text", len(masks), len(texts)
        )
    elif masks and not texts:
        logger.warning(
            "texts is empty: the %d position blob(s) are kept as positions without text, and no text is written",
            len(masks),
        )
    fonts = list(fonts) if fonts is not None else []
    colors = list(colors) if colors is not None else []
    for name, seq in (("fonts", fonts), ("colors", colors)):
        if len(seq) > len(texts):
            raise ValueError(f"{len(seq)} {name} for {len(texts)} text lines")
    lines = []
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            logger.warning(
                "line %d %r is longer than max_chars=%d and is cut to %r", i, text, max_chars, text[:max_chars]
            )
            text = text[:max_chars]
        mask = masks[i]
        if not mask.any():
            raise ValueError(f"positions: the mask of line {i} ({text!r}) is empty")
        polygon = find_polygon(mask)
        position = mask | polygon_mask(polygon, mask.shape)  # the reference fills the polygon into the blob
        font, crop = None, None
        f = fonts[i] if i < len(fonts) else None
        if not text.strip():
            logger.warning("texts[%d] is empty: nothing is written at its position", i)
        if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
            font = os.fsdecode(f)
            check_font_file(font, f"fonts[{i}]")
            missing = missing_chars(font, text)
            if missing:
                logger.warning(
                    "fonts[%d] %s has no glyph for %r: the font hint of line %d lacks them", i, font, missing, i
                )
        elif f is not None:
            crop = font_hint_from_image(f)
        lines.append(Line(text, position, polygon, font, crop, parse_color(colors[i] if i < len(colors) else None)))
    return lines, list(masks[len(texts) :])


def check_font_file(path: str, name: str = "fonts") -> None:
    """A font file FreeType can open, or a ValueError naming it (PIL's own error omits the path)."""
    if not os.path.isfile(path):
        raise ValueError(f"{name}: {path}: no such font file")
    try:
        load_font(path, 16)
    except OSError as err:
        raise ValueError(f"{name}: {path}: not a font FreeType can open ({err})") from None


def parse_color(color) -> tuple[int, int, int]:
    """RGB 0..255 (ints, floats in [0, 1] are not accepted: ambiguous), '#rrggbb' or None (unspecified)."""
    if color is None:
        return (UNSPECIFIED_COLOR,) * 3
    if isinstance(color, str):
        s = color.lstrip("#")
        if len(s) != 6:
            raise ValueError(f"colors: {color!r} is not '#rrggbb'")
        return tuple(int(s[k : k + 2], 16) for k in (0, 2, 4))
    c = tuple(int(round(float(v))) for v in color)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"colors: {color!r} is not an RGB triple in 0..255")
    return c


def font_hint_from_image(image) -> np.ndarray:
    """Stroke mask of a crop showing text in the wanted font (reference ``draw_font_hint``: adaptive
    threshold, dark strokes on a light background are ink)."""
    gray = cv2.cvtColor(to_uint8_hwc(image, "fonts"), cv2.COLOR_RGB2GRAY)
    return cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 11, 2) == 0


# ------------------------------------------------------------------------------------------------
# Batch
# ------------------------------------------------------------------------------------------------
def build_batch(
    image_captions: Sequence[str],
    text_caption: str,
    lines: Sequence[Line],
    extra_positions: Sequence[np.ndarray],
    hw: tuple[int, int],
    image: np.ndarray | None = None,
    glyph_scale: int = 1,
) -> Batch:
    """Render the conditions of one layout, shared by every caption, into a ``Batch``.

    Line slots: the real lines first, then positions without text (``line_valid`` False), which the
    reference keeps in the position hint and the edit mask. A call without lines gets the reference's
    single empty line ``' '`` with an all-zero position.
    """
    H, W = hw
    lines = list(lines)
    texts = [ln.text for ln in lines] or [" "]
    n_lines = len(lines) if lines else 1
    L = n_lines + len(extra_positions)
    glyphs = np.zeros((H * glyph_scale, W * glyph_scale), bool)
    font_hint = np.zeros((H, W), bool)
    positions = np.zeros((L, 1, H, W), bool)
    glyph_lines = np.zeros((L, 1, *render.GLYPH_LINE_HW), bool)
    colors = np.full((L, 3), UNSPECIFIED_COLOR, np.int16)
    for j, ln in enumerate(lines):
        glyph_font = default_glyph_font(ln.text)
        glyph_lines[j, 0] = render.render_glyph_line(glyph_font, ln.text)
        render.render_glyph_in_polygon(glyphs, glyph_font, ln.text, ln.polygon, ln.color, glyph_scale)
        if ln.font is not None:
            render.render_glyph_in_polygon(font_hint, ln.font, ln.text, ln.polygon, (255, 255, 255), 1)
        positions[j, 0] = ln.position
        colors[j] = ln.color
    for k, m in enumerate(extra_positions):
        positions[n_lines + k, 0] = m
    B = len(image_captions)
    edit = image is not None
    img = np.zeros((3, H, W), np.uint8) if image is None else np.ascontiguousarray(image.transpose(2, 0, 1))

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[None], B, axis=0)

    n = torch.full((B,), n_lines, dtype=torch.int64)
    return Batch(
        image=torch.from_numpy(rep(img)),
        edit_mode=torch.full((B,), edit, dtype=torch.bool),
        n_lines=n,
        line_valid=torch.arange(L)[None] < n[:, None],
        color=torch.from_numpy(rep(colors)),
        image_caption=list(image_captions),
        text_caption=[text_caption] * B,
        text=[texts + [" "] * (L - len(texts)) for _ in range(B)],
        language=[[""] * L for _ in range(B)],
        packed={
            "glyphs": pack_bits(rep(glyphs[None])),
            "font_hint": pack_bits(rep(font_hint[None])),
            "inv_mask": pack_bits(np.zeros((B, 1, H, W), bool)),
            "position": pack_bits(rep(positions)),
            "glyph_line": pack_bits(rep(glyph_lines)),
        },
    )
