"""Synthetic AnyWord-format data (real fonts on varied backgrounds) for the demo and tests."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .fonts import BUNDLED_FONT_DIR, load_font

LATIN_WORDS = (
    "OPEN",
    "coffee",
    "SALE",
    "Hello",
    "world",
    "diffusers",
    "AnyText",
    "menu",
    "STOP",
    "Welcome",
    "garden",
    "books",
    "2024",
    "FRESH",
    "bakery",
    "music",
    "Exit",
    "hotel",
    "taxi",
    "Summer",
)
CHINESE_WORDS = (
    "你好",
    "欢迎光临",
    "中国",
    "北京",
    "咖啡",
    "书店",
    "开业大吉",
    "新年快乐",
    "出口",
    "学习",
    "天气",
    "图书馆",
    "花园",
    "音乐",
    "超市",
    "饭店",
)
TRADITIONAL_WORDS = ("歡迎", "書店", "開業", "圖書館", "音樂")
LATIN_FONTS = ("NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "DejaVuSans.ttf")
CJK_FONTS = ("NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf")
STYLES = ("varied", "clean")
MIN_FIT_SIZE = 16  # px: two latent pixels at the VAE's factor 8
CLEAN_CONTRAST = 80.0  # luminance (of 255) between a clean line's colour and its background
SCENES = ("a shop sign", "a poster", "a street banner", "a book cover", "a wall painting", "a label")


def _background(rng, size, textured=True):
    """A vertical two-colour gradient and its end colours; ``textured``: plus pixel noise, 2-5 random
    shapes and a blur."""
    c0 = rng.integers(0, 256, 3)
    # A plain background is a gentle gradient (each channel within 48 of c0): room for a contrasting text colour.
    c1 = rng.integers(0, 256, 3) if textured else np.clip(c0 + rng.integers(-48, 49, 3), 0, 255)
    t = np.linspace(0, 1, size)[:, None, None]
    img = (c0 * (1 - t) + c1 * t).repeat(size, axis=1)
    if not textured:
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), (c0, c1)
    img = img + rng.normal(0, 8, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(20, size // 2, 2)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x), int(y), int(x + w), int(y + h)], fill=col)
    return im.filter(ImageFilter.GaussianBlur(1.5)), (c0, c1)


def _luminance(rgb):
    return 0.299 * float(rgb[0]) + 0.587 * float(rgb[1]) + 0.114 * float(rgb[2])


def _contrasting_color(rng, ends, min_difference=CLEAN_CONTRAST):
    """A random colour whose luminance is at least ``min_difference`` (of 255) away from every point of
    the gradient between ``ends``; a draw too close is blended toward black or white (the side with more
    room) until it is, as far as the gradient leaves room."""
    color = rng.integers(0, 256, 3).astype(float)
    lo, hi = sorted(_luminance(e) for e in ends)
    y = _luminance(color)
    if y <= lo - min_difference or y >= hi + min_difference:
        return [int(v) for v in color]
    target, goal = (0.0, max(0.0, lo - min_difference)) if lo >= 255 - hi else (255.0, min(255.0, hi + min_difference))
    a = (goal - y) / (target - y) if target != y else 0.0
    return [int(round(v + a * (target - v))) for v in color]


def _draw_line(im, rng, text, font_path, color, vertical, occupied, size, angle=None, fit=False):
    """Draw one line somewhere free; returns its polygon (int corners) or None if no room.

    ``angle`` (degrees, counter-clockwise) defaults to a random draw: 0 for vertical lines and 40 % of
    the others, else uniform in [-35, 35]. ``fit``: a horizontal line too wide for the image is drawn
    smaller (down to ``MIN_FIT_SIZE`` px) instead of being dropped."""
    fs = int(rng.integers(24, 56))
    font = load_font(font_path, fs)
    if fit and not vertical:
        left, _, right, _ = font.getbbox(text)
        width = right - left + 8
        if width > size - 6:
            fs = max(MIN_FIT_SIZE, int(fs * (size - 6) / width))
            font = load_font(font_path, fs)
    if vertical:
        boxes = [font.getbbox(c) for c in text]
        tw = max(b[2] for b in boxes) + 4
        th = sum(fs + 4 for _ in text)
    else:
        l, t, r, b = font.getbbox(text)
        tw, th = r - l + 8, b - t + 8
    if angle is None:
        angle = 0.0 if vertical or rng.random() < 0.4 else float(rng.uniform(-35, 35))
    layer = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if vertical:
        y = 2
        for c in text:
            d.text((2, y - font.getbbox(c)[1] + 2), c, font=font, fill=tuple(color) + (255,))
            y += fs + 4
    else:
        d.text((4 - l, 4 - t), text, font=font, fill=tuple(color) + (255,))
    rot = layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    if rot.width >= size - 4 or rot.height >= size - 4:
        return None
    for _ in range(30):
        x = int(rng.integers(2, size - rot.width - 1))
        y = int(rng.integers(2, size - rot.height - 1))
        box = (x, y, x + rot.width, y + rot.height)
        if all(box[2] <= o[0] or box[0] >= o[2] or box[3] <= o[1] or box[1] >= o[3] for o in occupied):
            break
    else:
        return None
    occupied.append(box)
    im.paste(rot, (x, y), rot)
    cx, cy = x + rot.width / 2, y + rot.height / 2
    a = math.radians(angle)
    corners = []
    for px, py in ((-tw / 2, -th / 2), (tw / 2, -th / 2), (tw / 2, th / 2), (-tw / 2, th / 2)):
        corners.append(
            [int(round(cx + px * math.cos(a) + py * math.sin(a))), int(round(cy - px * math.sin(a) + py * math.cos(a)))]
        )
    return corners


def make_record(rng, size, img_name, out_dir, max_text_lines=7, min_text_lines=0, pools=None, style="varied"):
    """``pools``: optional (latin, chinese, traditional) word pools replacing the built-in ones. ``style``
    (``STYLES``): "varied" draws textured backgrounds, rotated and vertical lines, colours at random and
    15 % of lines marked invalid; "clean" draws plain gradients and horizontal, valid lines in a colour
    that stands out from the background, shrinking a line that is too wide (text to learn letters from)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    clean = style == "clean"
    latin_words, chinese_words, traditional_words = pools or (LATIN_WORDS, CHINESE_WORDS, TRADITIONAL_WORDS)
    im, ends = _background(rng, size, textured=not clean)
    occupied, anns, words = [], [], []
    n = int(rng.integers(min_text_lines, max_text_lines + 1)) if rng.random() < 0.9 or min_text_lines else 0
    for _ in range(n):
        kind = rng.random()
        vertical = False
        if kind < 0.5:
            text, lang = latin_words[int(rng.integers(len(latin_words)))], "Latin"
            font = LATIN_FONTS[int(rng.integers(len(LATIN_FONTS)))]
        else:
            pool = traditional_words if rng.random() < 0.2 and traditional_words else chinese_words
            text, lang = pool[int(rng.integers(len(pool)))], "Chinese"
            font = CJK_FONTS[int(rng.integers(len(CJK_FONTS)))]
            vertical = rng.random() < 0.35 and not clean
        color = _contrasting_color(rng, ends) if clean else [int(v) for v in rng.integers(0, 256, 3)]
        angle = 0.0 if clean else None
        poly = _draw_line(im, rng, text, str(BUNDLED_FONT_DIR / font), color, vertical, occupied, size, angle, clean)
        if poly is None:
            continue
        ann = {"polygon": poly, "text": text, "language": lang, "color": color}
        if not clean and rng.random() < 0.15:
            ann["valid"] = False  # e.g. an unreadable line in real data
        else:
            ann["valid"] = True
            words.append(text)
        anns.append(ann)
    im.save(os.path.join(out_dir, img_name), quality=92)
    scene = SCENES[int(rng.integers(len(SCENES)))]
    caption = f"{scene} with the words {', '.join(words)}. Colourful background" if words else f"{scene}. Plain"
    return {
        "img_name": img_name,
        "caption": caption,
        "wm_score": round(float(rng.random() * 0.3), 3),
        "annotations": anns,
    }


def _fault_records(out_dir, size):
    """Records with each kind of record-level fault the pipeline must survive."""
    with open(os.path.join(out_dir, "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8 this is not a jpeg")
    Image.new("RGB", (size, size), (200, 200, 200)).save(os.path.join(out_dir, "plain.jpg"))
    sq = [[50, 50], [250, 50], [250, 120], [50, 120]]
    return [
        {"img_name": "does_not_exist.jpg", "caption": "missing file", "annotations": []},
        {"img_name": "corrupt.jpg", "caption": "corrupt file", "annotations": []},
        {
            "img_name": "plain.jpg",
            "caption": "a * star in the caption",
            "annotations": [
                {"polygon": [[1, 1], [5, 5]], "text": "two points", "language": "Latin"},
                {"polygon": [[float("nan"), 3], [9, 9], [3, 9]], "text": "nan", "language": "Latin"},
                {"polygon": [[900, 900], [990, 900], [990, 990], [900, 990]], "text": "outside", "language": "Latin"},
                {
                    "polygon": [[50.5, 150.2], [250.7, 150], [250, 220], [50, 220.4]],
                    "text": "float",
                    "language": "Latin",
                    "color": [10, 20, 30],
                },
                {"polygon": sq, "text": "   ", "language": "Latin", "color": [0, 0, 0]},
            ],
        },
        {
            "img_name": "plain.jpg",
            "annotations": [  # no caption
                {"polygon": sq, "text": "नमस्ते", "language": "Hindi", "color": [0, 0, 0]},
                {"polygon": [[50, 300], [250, 300], [250, 370], [50, 370]], "text": "no colour", "language": "Latin"},
            ],
        },
    ]


def make_demo_data(
    out_dir: str,
    n: int = 8,
    seed: int = 0,
    resolution: int = 512,
    with_faults: bool = False,
    json_name: str = "data_v1.2b.json",
    lines_per_image: tuple = (0, 7),
    pools: tuple | None = None,
    style: str = "varied",
) -> str:
    """Write ``n`` images and an AnyWord-format annotation JSON into ``out_dir``; return the JSON path.

    ``lines_per_image`` (min, max) text lines drawn per image (some may not fit). With ``with_faults`` a
    few broken records (missing/corrupt image, bad polygons, empty text, unknown language, missing
    caption/colour, '*' in a caption) are appended. ``pools``: (latin, chinese, traditional) pools
    replacing the built-in word lists (an empty traditional pool draws from the Chinese one). ``style``:
    see ``make_record``.
    """
    img_dir = os.path.join(out_dir, "imgs")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = lines_per_image
    data = [make_record(rng, resolution, f"{i:06d}.jpg", img_dir, hi, lo, pools, style) for i in range(n)]
    if with_faults:
        data += _fault_records(img_dir, resolution)
    path = os.path.join(out_dir, json_name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"data_root": "imgs", "data_list": data}, f, ensure_ascii=False)
    return path


def make_rotated_line_data(
    out_dir: str,
    n: int = 8,
    seed: int = 0,
    resolution: int = 512,
    max_angle: float = 60.0,
    vertical_prob: float = 0.3,
    lines_per_image: int = 4,
    json_name: str = "data_v1.2b.json",
) -> str:
    """Like ``make_demo_data`` but every horizontal line is turned by an angle uniform in
    [-max_angle, max_angle] and a share ``vertical_prob`` of the lines are vertical Chinese (a test
    set for text detection and reading); every drawn line is valid. Returns the JSON path."""
    img_dir = os.path.join(out_dir, "imgs")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n):
        im, _ = _background(rng, resolution)
        occupied, anns = [], []
        for _ in range(lines_per_image):
            vertical = rng.random() < vertical_prob
            if vertical or rng.random() < 0.5:
                text, lang = CHINESE_WORDS[int(rng.integers(len(CHINESE_WORDS)))], "Chinese"
                font = CJK_FONTS[int(rng.integers(len(CJK_FONTS)))]
            else:
                text, lang = LATIN_WORDS[int(rng.integers(len(LATIN_WORDS)))], "Latin"
                font = LATIN_FONTS[int(rng.integers(len(LATIN_FONTS)))]
            angle = 0.0 if vertical else float(rng.uniform(-max_angle, max_angle))
            color = [int(v) for v in rng.integers(0, 256, 3)]
            poly = _draw_line(im, rng, text, str(BUNDLED_FONT_DIR / font), color, vertical, occupied, resolution, angle)
            if poly is not None:
                anns.append({"polygon": poly, "text": text, "language": lang, "color": color, "valid": True})
        name = f"rot{i:05d}.jpg"
        im.save(os.path.join(img_dir, name), quality=92)
        data.append({"img_name": name, "caption": "rotated and vertical text", "annotations": anns})
    path = os.path.join(out_dir, json_name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"data_root": "imgs", "data_list": data}, f, ensure_ascii=False)
    return path
