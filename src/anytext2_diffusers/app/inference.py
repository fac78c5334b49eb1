"""What the app does with one request, without Gradio: check it, turn it into a pipeline call, run it.

Everything a user can get wrong is checked here and raised as :class:`AppError`, whose text is what the
page shows; the Gradio layer (``ui.py``) only maps widgets to these functions.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw

from ..data.fonts import BUNDLED_FONT_DIR, load_font, missing_chars
from ..pipelines import inputs as I

MAX_LINES = 5  # the reference demo's number of per-line font / colour rows
NO_FONT = "No font"  # the line gets no font condition (reference "No Font")
UPLOADED_FONT = "Uploaded font"
MAX_SEED = 2**31 - 1
# Region colours of the layout preview (line 1, 2, ...).
LAYOUT_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


class AppError(ValueError):
    """A request the app cannot run; the message is shown to the user as is."""


def bundled_fonts() -> dict[str, str]:
    """Display name -> path of the fonts shipped with the package."""
    return {p.stem: str(p) for p in sorted(BUNDLED_FONT_DIR.iterdir()) if p.suffix.lower() in (".ttf", ".otf")}


def font_choices() -> list[str]:
    return [NO_FONT, *bundled_fonts(), UPLOADED_FONT]


# ------------------------------------------------------------------------------------------------
# request pieces
# ------------------------------------------------------------------------------------------------
def parse_lines(text: str | None) -> list[str]:
    """One text line per line of the box; surrounding blank lines are dropped, a blank line in between is an
    error (it would silently shift every later line to the wrong region)."""
    rows = [r.strip() for r in (text or "").replace("\r\n", "\n").split("\n")]
    while rows and not rows[-1]:
        rows.pop()
    while rows and not rows[0]:
        rows.pop(0)
    if not rows:
        raise AppError("Type the text to write: one line of the text box per drawn region.")
    empty = [i + 1 for i, r in enumerate(rows) if not r]
    if empty:
        raise AppError(f"Text line {empty[0]} is empty: remove the blank line or type its text.")
    return rows


def parse_color(value) -> tuple[int, int, int] | None:
    """A colour picker value ('#rrggbb', 'rgb(...)'/'rgba(...)', a CSS name) -> RGB, or None (unspecified).

    Pure black and pure white mean "no colour" as in the reference demo, whose pickers start at black.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str) and value.strip().lower().startswith("rgb"):
            parts = value[value.index("(") + 1 : value.rindex(")")].split(",")[:3]
            rgb = tuple(int(round(float(p))) for p in parts)
        else:
            rgb = tuple(ImageColor.getcolor(str(value), "RGB"))
    except (ValueError, IndexError) as e:
        raise AppError(f"Colour {value!r} is not a colour (use #rrggbb).") from e
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise AppError(f"Colour {value!r} is not an RGB colour.")
    return None if rgb in ((0, 0, 0), (255, 255, 255)) else rgb


def resolve_fonts(texts: Sequence[str], choices: Sequence[str | None], uploaded: str | None) -> list[str | None]:
    """Per line: the font file chosen for it (None = no font condition). Fails when a font cannot draw the
    line, or when no bundled font can draw its glyphs (the glyph condition would be blank)."""
    fonts = bundled_fonts()
    out: list[str | None] = []
    for i, text in enumerate(texts):
        choice = choices[i] if i < len(choices) else None
        default = I.default_glyph_font(text)
        lacking = missing_chars(default, text)
        if lacking:
            raise AppError(f"Line {i + 1} ({text!r}): no bundled font has {_chars(lacking)}, so it cannot be written.")
        if choice in (None, "", NO_FONT):
            out.append(None)
            continue
        if choice == UPLOADED_FONT:
            if not uploaded:
                raise AppError(f"Line {i + 1} uses the uploaded font, but no font file was uploaded.")
            path = str(uploaded)
            name = Path(path).name
            try:
                load_font(path, 20)
            except OSError as e:
                raise AppError(f"The uploaded file {name!r} is not a font PIL can open (.ttf / .otf).") from e
        elif choice in fonts:
            path, name = fonts[choice], choice
        else:
            raise AppError(f"Line {i + 1}: unknown font {choice!r}.")
        lacking = missing_chars(path, text)
        if lacking:
            raise AppError(f"Line {i + 1} ({text!r}): font {name!r} has no glyph for {_chars(lacking)}.")
        out.append(path)
    return out


def _chars(chars: str) -> str:
    return ", ".join(repr(c) for c in dict.fromkeys(chars))


def editor_mask(value: dict | None, what: str) -> np.ndarray | None:
    """Where the user painted in a Gradio ``ImageEditor`` value (``background``, ``layers``, ``composite``):
    any pixel of any layer that is not fully transparent. None when nothing was painted."""
    if not value:
        return None
    layers = [np.asarray(a) for a in (value.get("layers") or []) if a is not None]
    masks = [a[..., 3] > 0 for a in layers if a.ndim == 3 and a.shape[2] == 4]
    if layers and not masks:
        raise AppError(f"{what}: the painted layer has no transparency channel (expected RGBA).")
    if not masks:
        return None
    mask = np.zeros(masks[0].shape, bool)
    for m in masks:
        if m.shape != mask.shape:
            m = resize_mask(m, mask.shape)
        mask |= m
    return mask if mask.any() else None


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``hw`` (the canvas may differ from the image size)."""
    if mask.shape == tuple(hw):
        return mask
    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def editor_image(value: dict | None) -> np.ndarray | None:
    """The uploaded background of an ``ImageEditor`` value as uint8 RGB (transparency composited on white)."""
    if not value or value.get("background") is None:
        return None
    arr = np.asarray(value["background"])
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def layout_preview(base: np.ndarray, masks: Sequence[np.ndarray], texts: Sequence[str]) -> Image.Image:
    """The drawn regions in the order the pipeline pairs them with the lines: region i in colour i, labelled
    ``i: text``; regions without a line are grey."""
    img = Image.fromarray(base).convert("RGB")
    overlay = np.asarray(img).astype(np.float32)
    labels = []
    for i, m in enumerate(masks):
        color = LAYOUT_COLORS[i % len(LAYOUT_COLORS)] if i < len(texts) else (128, 128, 128)
        overlay[m] = 0.45 * overlay[m] + 0.55 * np.asarray(color, np.float32)
        ys, xs = np.nonzero(m)
        label = f"{i + 1}: {texts[i]}" if i < len(texts) else f"{i + 1}: (no text)"
        labels.append((int(xs.min()), int(ys.min()), label, color))
    img = Image.fromarray(overlay.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    size = max(10, min(img.size) // 16)
    for x, y, label, color in labels:
        font = load_font(I.default_glyph_font(label), size)
        top = max(0, y - size - 4)
        box = draw.textbbox((x, top), label, font=font)
        draw.rectangle(box, fill=(255, 255, 255))
        draw.text((x, top), label, fill=color, font=font)
    return img


# ------------------------------------------------------------------------------------------------
# one request
# ------------------------------------------------------------------------------------------------
@dataclass
class Request:
    """One generate or edit request, as the page collects it."""

    mode: str  # "generate" | "edit"
    prompt: str
    texts: str  # one line per text line
    regions: np.ndarray | None  # bool HxW, where the user painted
    image: np.ndarray | None = None  # edit: uint8 HxWx3
    width: int = 512
    height: int = 512
    fonts: Sequence[str | None] = ()
    colors: Sequence = ()
    uploaded_font: str | None = None
    negative_prompt: str = ""
    added_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    seed: int = -1
    num_images: int = 1
    strength: float = 1.0
    attnx_scale: float = 1.0
    keep_unmasked_area: bool = False
    sort_priority: str = "vertical"


@dataclass
class Result:
    images: list[Image.Image]
    layout: Image.Image
    seed: int
    warnings: list[str] = field(default_factory=list)


def prepare(req: Request) -> tuple[dict, Image.Image, list[str]]:
    """Check a request; returns the pipeline's keyword arguments (without generator / callback), the layout
    preview and the warnings to show. Raises :class:`AppError` with the message for the user."""
    if req.mode not in ("generate", "edit"):
        raise AppError(f"Unknown mode {req.mode!r}.")
    texts = parse_lines(req.texts)
    if len(texts) > MAX_LINES:
        raise AppError(f"{len(texts)} text lines: the app takes at most {MAX_LINES}.")
    warnings = []
    for i, t in enumerate(texts):
        if len(t) > I.MAX_CHARS:
            warnings.append(f"Line {i + 1} is longer than {I.MAX_CHARS} characters and is cut to {t[: I.MAX_CHARS]!r}.")
    if req.mode == "edit":
        if req.image is None:
            raise AppError("Upload the image to edit first.")
        h, w = req.image.shape[:2]
        H, W = I.edit_size(h, w)
        if H < I.SIZE_MULTIPLE or W < I.SIZE_MULTIPLE:
            raise AppError(f"The image is {w}x{h} pixels: too small to edit, both sides must be at least 64.")
        base, hw, what = req.image, (h, w), "Paint over the text to replace"
    else:
        W, H = int(req.width), int(req.height)
        if W < I.SIZE_MULTIPLE or H < I.SIZE_MULTIPLE or W % I.SIZE_MULTIPLE or H % I.SIZE_MULTIPLE:
            raise AppError(f"Image size {W}x{H}: width and height must be multiples of 64, at least 64.")
        base, hw, what = np.full((H, W, 3), 235, np.uint8), (H, W), "Draw where each line goes"
    if req.regions is None or not req.regions.any():
        raise AppError(f"{what}: nothing is drawn. Draw one box or stroke per text line.")
    regions = resize_mask(np.asarray(req.regions, bool), hw)
    masks = I.positions_to_masks(regions, hw, req.sort_priority)
    if len(texts) > len(masks):
        raise AppError(
            f"{len(texts)} text lines but {len(masks)} drawn region{'s' * (len(masks) != 1)}: draw one separate box"
            " or stroke per line (touching strokes count as one region; specks under 20 pixels are ignored)."
        )
    if len(masks) > len(texts):
        first, last = len(texts) + 1, len(masks)
        extra = f"region {last} gets" if first == last else f"regions {first}-{last} get"
        warnings.append(
            f"{len(masks)} regions for {len(texts)} lines: {extra} no text (kept in the position hint, as in the"
            " reference)."
        )
    fonts = resolve_fonts(texts, list(req.fonts), req.uploaded_font)
    colors = [parse_color(c) for c in list(req.colors)[: len(texts)]]
    if not 1 <= int(req.num_images) <= 16:
        raise AppError("Number of images must be between 1 and 16.")
    if not 1 <= int(req.num_inference_steps) <= 200:
        raise AppError("Steps must be between 1 and 200.")
    kwargs = dict(
        prompt=req.prompt or "",
        texts=texts,
        positions=regions,
        mode=req.mode,
        fonts=fonts,
        colors=colors,
        num_inference_steps=int(req.num_inference_steps),
        guidance_scale=float(req.guidance_scale),
        negative_prompt=req.negative_prompt or "",
        added_prompt=req.added_prompt or None,
        strength=float(req.strength),
        attnx_scale=float(req.attnx_scale),
        num_images_per_prompt=int(req.num_images),
        sort_priority=req.sort_priority,
    )
    if req.mode == "edit":
        kwargs.update(image=req.image, keep_unmasked_area=bool(req.keep_unmasked_area))
    else:
        kwargs.update(height=H, width=W)
    return kwargs, layout_preview(base, masks, texts), warnings


def run(pipe, req: Request, progress: Callable[[int, int], None] | None = None) -> Result:
    """Check ``req`` and run the pipeline; ``progress(step, total)`` is called after every sampling step.

    Seed -1 draws one; the seed used is returned so a result can be reproduced. ``ValueError`` from the
    pipeline (its input checks) becomes :class:`AppError`.
    """
    kwargs, layout, warnings = prepare(req)
    seed = int(req.seed)
    if seed < 0:
        seed = secrets.randbelow(MAX_SEED)
    steps = kwargs["num_inference_steps"]

    def on_step_end(_pipe, i, _t, tensors):
        if progress is not None:
            progress(i + 1, steps)
        return tensors

    try:
        images = pipe(
            **kwargs,
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=on_step_end,
            output_type="pil",
        ).images
    except ValueError as e:
        raise AppError(str(e)) from e
    return Result(images=list(images), layout=layout, seed=seed, warnings=warnings)
