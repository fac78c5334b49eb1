"""One PNG per sample showing everything the model will be conditioned on (check before training)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .fonts import BUNDLED_FONT_DIR, load_font
from .sample import Sample

PANEL = 256
LINE_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
LABEL_FONT = str(BUNDLED_FONT_DIR / "NotoSansSC-Subset.otf")  # ASCII + Chinese


def _panel(arr, title):
    im = Image.fromarray(arr).convert("RGB").resize((PANEL, PANEL), Image.Resampling.NEAREST)
    out = Image.new("RGB", (PANEL, PANEL + 18), (255, 255, 255))
    out.paste(im, (0, 18))
    ImageDraw.Draw(out).text((4, 1), title, font=load_font(LABEL_FONT, 13), fill=(0, 0, 0))
    return out


def _mask(m):
    return m.astype(np.uint8) * 255


def preview_image(s: Sample) -> Image.Image:
    """Panels: image + polygons/texts, glyphs, positions, font hint, masked image, inv_mask; glyph lines; captions."""
    img = Image.fromarray(s.image.transpose(1, 2, 0)).convert("RGB")
    d = ImageDraw.Draw(img)
    font = load_font(LABEL_FONT, 16)
    for j, (poly, text) in enumerate(zip(s.polygons, s.texts)):
        col = LINE_COLORS[j % len(LINE_COLORS)]
        pts = [tuple(map(int, p)) for p in poly]
        d.line(pts + [pts[0]], fill=col, width=2)
        d.text((pts[0][0] + 2, max(pts[0][1] - 18, 0)), f"{j}:{text}", font=font, fill=col)
    pos = np.full(s.positions.shape[1:] + (3,), 255, np.uint8)
    for j, p in enumerate(s.positions):
        pos[p] = LINE_COLORS[j % len(LINE_COLORS)]
    inv = s.image.transpose(1, 2, 0).copy()
    inv[s.inv_mask] = (inv[s.inv_mask] * 0.3 + np.array([255, 0, 0]) * 0.7).astype(np.uint8)
    panels = [
        _panel(np.asarray(img), "image, lines"),
        _panel(_mask(s.glyphs), "glyphs (union)"),
        _panel(pos, "positions"),
        _panel(_mask(s.font_hint), "font hint"),
        _panel(s.masked_image.transpose(1, 2, 0), "masked image (edit)" if s.edit_mode else "masked image (gen: -1)"),
        _panel(inv, "inv_mask (red)"),
    ]
    n = max(s.n_lines, 1)
    lines_h = n * 44
    text_rows = [
        f"image_caption: {s.image_caption}",
        f"text_caption: {s.text_caption}",
        "lines: "
        + " | ".join(
            f"{t!r} {lang} rgb={tuple(int(v) for v in c)}" for t, lang, c in zip(s.texts, s.languages, s.colors)
        ),
        f"index {s.index}, faults: {', '.join(s.faults) or 'none'}",
    ]
    W = PANEL * 3
    H = 2 * (PANEL + 18) + lines_h + 20 * len(text_rows) * 2 + 10
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    for k, p in enumerate(panels):
        canvas.paste(p, ((k % 3) * PANEL, (k // 3) * (PANEL + 18)))
    y = 2 * (PANEL + 18)
    for gl in s.glyph_lines:
        canvas.paste(Image.fromarray(_mask(gl)).resize((256, 40)), (0, y))
        y += 44
    d = ImageDraw.Draw(canvas)
    y += 4
    for row in text_rows:  # wrap long rows
        for k in range(0, len(row), 90):
            d.text((4, y), row[k : k + 90], font=load_font(LABEL_FONT, 14), fill=(0, 0, 0))
            y += 20
    return canvas.crop((0, 0, W, min(H, y + 6)))
