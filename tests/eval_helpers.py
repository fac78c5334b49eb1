"""Synthetic AnyText benchmarks for the evaluation tests: real fonts rendered at known polygons."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path(__file__).resolve().parents[1] / "src/anytext2_diffusers/assets/fonts"
LATIN_FONTS = ("NotoSans-Regular.ttf", "DejaVuSans.ttf", "NotoSerif-Regular.ttf")
CHINESE_FONTS = ("NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf")

# (text, language, font family): one benchmark image per row, lines as in AnyWord annotations.
PAGES = [
    [("Happy Birthday", "Latin"), ("OPEN", "Latin"), ("coffee shop", "Latin")],
    [("Welcome", "Latin"), ("SALE 50%", "Latin")],
    [("Hugging Face", "Latin"), ("New York", "Latin"), ("Fresh Bread", "Latin")],
    [("你好", "Chinese"), ("北京欢迎你", "Chinese"), ("hello", "Latin")],
    [("人工智能", "Chinese"), ("生日快乐", "Chinese")],
    [("欢迎光临", "Chinese"), ("深度学习", "Chinese"), ("图书馆", "Chinese")],
]
ANGLES = (0.0, 12.0, -8.0)
CENTERS = ((256, 110), (256, 260), (256, 410))


def _line_image(text: str, font_file: str, size: int) -> np.ndarray:
    font = ImageFont.truetype(str(FONT_DIR / font_file), size)
    left, top, right, bottom = font.getbbox(text)
    margin = (8, 6)
    img = Image.new("RGB", (right - left + 2 * margin[0], bottom - top + 2 * margin[1]), (250, 250, 245))
    ImageDraw.Draw(img).text((margin[0] - left, margin[1] - top), text, font=font, fill=(20, 20, 30))
    return np.asarray(img)


def paste_line(canvas: np.ndarray, text: str, font_file: str, angle: float, center, size: int = 40) -> np.ndarray:
    """Draw ``text`` rotated by ``angle`` degrees (counter-clockwise) about ``center``; returns its polygon."""
    line = _line_image(text, font_file, size)
    h, w = line.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rot[:, 2] += np.asarray(center, np.float64) - np.array([w / 2, h / 2])
    H, W = canvas.shape[:2]
    warped = cv2.warpAffine(line, rot, (W, H), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), rot, (W, H), flags=cv2.INTER_NEAREST)
    canvas[inside > 0] = warped[inside > 0]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    return corners @ rot[:, :2].T + rot[:, 2]


def make_benchmark(root: Path, num_samples: int = 2, pages=PAGES) -> tuple[Path, Path]:
    """Write ``root/bench.json`` and ``root/images/{stem}_{k}.jpg``: every sample k draws the page's
    texts at the same polygons (as a faithful generator would), with another font and background."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    data_list = []
    for i, page in enumerate(pages):
        name = f"page{i:03d}.jpg"
        polygons = None
        for k in range(num_samples):
            rng = np.random.default_rng(100 * i + k)
            canvas = np.empty((512, 512, 3), np.uint8)
            canvas[:] = rng.integers(60, 200, size=3)
            canvas = np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).astype(np.uint8)
            polys = []
            for j, (text, lang) in enumerate(page):
                fonts = CHINESE_FONTS if lang == "Chinese" else LATIN_FONTS
                polys.append(paste_line(canvas, text, fonts[(k + j) % len(fonts)], ANGLES[j], CENTERS[j]))
            polygons = polygons or polys  # the benchmark stores sample 0's polygons
            Image.fromarray(canvas).save(images / f"page{i:03d}_{k}.jpg", quality=95)
        annotations = [
            {"polygon": np.round(p).astype(int).tolist(), "text": t, "language": lang, "valid": True}
            for p, (t, lang) in zip(polygons, page)
        ]
        caption = "a photo of a sign that says " + ", ".join(f'"{PLACEHOLDER}"' for _ in page)
        data_list.append({"img_name": name, "caption": caption, "annotations": annotations})
    bench = root / "bench.json"
    bench.write_text(json.dumps({"data_root": "", "data_list": data_list}, ensure_ascii=False), encoding="utf-8")
    return bench, images


PLACEHOLDER = "*"
