"""Regenerate tests/golden/reference_render.npz from the reference AnyText2 code (developer tool).

    python tests/golden/make_golden.py --ref /path/to/AnyText2

Runs the reference's own ``draw_glyph``, ``draw_glyph2``, ``T3DataSet.draw_pos`` and
``draw_font_hint`` on crafted inputs, with the random draws fixed, and stores their outputs. Only
compatibility shims are applied so it runs on current libraries: ``np.int0`` (removed in numpy 2),
``FreeTypeFont.getsize/getoffset`` (removed in Pillow 10), ``ujson``, and ``cv2.minAreaRect``'s angle
mapped to the OpenCV 4.5-4.x convention the reference was written for (its pinned 4.7).
"""

import argparse
import io
import json
import os
import sys

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
FONTS = os.path.join(HERE, "..", "..", "src", "anytext2_diffusers", "assets", "fonts")
LATIN = os.path.join(FONTS, "DejaVuSans.ttf")
CJK = os.path.join(FONTS, "NotoSansSC-Subset.otf")

GLYPH_CASES = [  # name, font, text, polygon, color, scale
    ("horizontal", LATIN, "hello", [[60, 60], [300, 60], [300, 120], [60, 120]], [200, 30, 30], 1),
    ("rotated25", LATIN, "AnyText2", [[100, 300], [330, 193], [351, 238], [121, 345]], [500, 500, 500], 1),
    ("rotated_ccw", LATIN, "world 42", [[0, 17], [100, 0], [103, 20], [3, 37]], [0, 0, 0], 1),
    ("steep60", LATIN, "diffusers", [[300, 450], [400, 277], [435, 297], [335, 470]], [5, 5, 5], 1),
    ("vertical_cjk", CJK, "欢迎光临", [[400, 100], [450, 100], [450, 400], [400, 400]], [30, 200, 30], 1),
    ("near_vertical_cjk", CJK, "北京", [[200, 150], [240, 153], [232, 300], [192, 297]], [255, 255, 255], 1),
    ("tiny", LATIN, "x", [[10, 10], [10, 10], [10, 10], [10, 10]], [255, 0, 0], 1),
    ("scale2", LATIN, "ok!", [[20, 400], [200, 400], [200, 460], [20, 460]], [100, 100, 250], 2),
    ("mixed_cjk", CJK, "开业大吉2024", [[40, 200], [460, 200], [460, 260], [40, 260]], [500, 500, 500], 1),
]
LINE_CASES = [("hello", LATIN), ("欢迎光临", CJK), (" ", LATIN), ("a very long line of text here", LATIN)]
POS_CASES = [  # polygon, morph draw
    ([[100, 300], [330, 193], [351, 238], [121, 345]], u) for u in (0.5, 0.75, 0.85, 0.92, 0.97)
] + [([[50, 50], [60, 50], [60, 120], [50, 120]], u) for u in (0.75, 0.85, 0.97)]
HINT_CASES = [  # polygon, randaug, area_range, draws (rot, tx, ty, scale, area, start)
    ([[60, 60], [300, 60], [300, 120], [60, 120]], False, (0.7, 1.0), (0.5, 0.5, 0.5, 0.5, 0.3, 0.6)),
    ([[60, 60], [300, 60], [300, 120], [60, 120]], False, (1.0, 1.0), (0.5, 0.5, 0.5, 0.5, 0.0, 0.0)),
    ([[100, 300], [330, 193], [351, 238], [121, 345]], True, (0.7, 1.0), (0.8, 0.2, 0.7, 0.9, 0.5, 0.25)),
    ([[100, 300], [330, 193], [351, 238], [121, 345]], True, (0.7, 1.0), (0.1, 0.9, 0.4, 0.1, 0.9, 0.9)),
    ([[-20, 430], [200, 430], [200, 540], [-20, 540]], False, (0.7, 1.0), (0.5, 0.5, 0.5, 0.5, 0.6, 0.1)),
]


def hint_image():
    img = Image.new("RGB", (512, 512), (210, 200, 180))
    d = ImageDraw.Draw(img)
    d.text((70, 62), "hello", font=ImageFont.truetype(LATIN, 48), fill=(20, 20, 60))
    layer = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((120, 240), "AnyText2", font=ImageFont.truetype(LATIN, 40), fill=(40, 10, 10, 255))
    img.paste(layer.rotate(25, center=(225, 268)), (0, 0), layer.rotate(25, center=(225, 268)))
    d.text((10, 440), "edge", font=ImageFont.truetype(LATIN, 50), fill=(0, 0, 0))
    return np.asarray(img)


class FixedRandom:
    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    def uniform(self, a, b):
        return a + (b - a) * self.random()


def install_shims():
    sys.modules.setdefault("ujson", json)
    np.int0 = np.intp
    ImageFont.FreeTypeFont.getsize = lambda self, t: tuple(self.getbbox(t)[2:])
    ImageFont.FreeTypeFont.getoffset = lambda self, t: tuple(self.getbbox(t)[:2])
    orig = cv2.minAreaRect

    def min_area_rect_4x(pts):
        c, (w, h), a = orig(
            np.asarray(pts, dtype=np.float32) if np.asarray(pts).dtype.kind == "f" else np.asarray(pts, np.int32)
        )
        if a < 0:
            (w, h, a) = (w, h, 90.0) if a == -90 else (h, w, a + 90)
        return c, (w, h), a

    cv2.minAreaRect = min_area_rect_4x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True)
    args = ap.parse_args()
    install_shims()
    sys.path.insert(0, args.ref)
    import t3_dataset as t3

    out = {}
    meta = {"glyph": [], "line": [], "pos": [], "hint": []}
    for name, font, text, poly, color, scale in GLYPH_CASES:
        img = t3.draw_glyph2(
            ImageFont.truetype(font, 60), text, np.array(poly, np.float32), np.array(color), scale=scale
        )
        out[f"glyph_{name}"] = np.packbits(img.sum(axis=2) != 0, axis=-1)
        meta["glyph"].append(
            {
                "name": name,
                "font": os.path.basename(font),
                "text": text,
                "polygon": poly,
                "color": color,
                "scale": scale,
            }
        )
    for i, (text, font) in enumerate(LINE_CASES):
        out[f"line_{i}"] = np.packbits(t3.draw_glyph(ImageFont.truetype(font, 60), text)[..., 0] != 0, axis=-1)
        meta["line"].append({"text": text, "font": os.path.basename(font)})
    ds = t3.T3DataSet.__new__(t3.T3DataSet)
    ds.img_wh = 512
    for i, (poly, u) in enumerate(POS_CASES):
        t3.random = FixedRandom([0.0, u])
        out[f"pos_{i}"] = np.packbits(ds.draw_pos(np.array(poly, np.int32), 1.0)[..., 0] != 0, axis=-1)
        meta["pos"].append({"polygon": poly, "u": u})
    image = hint_image()
    for i, (poly, aug, area, draws) in enumerate(HINT_CASES):
        t3.random = FixedRandom([0.0] + (list(draws) if aug else list(draws[4:])))
        target = image.astype(np.float32) / 127.5 - 1.0
        hint, _ = t3.draw_font_hint(target, np.array(poly, np.int64), list(area), 1.0, aug)
        out[f"hint_{i}"] = np.packbits(hint[..., 0] != 0, axis=-1)
        meta["hint"].append({"polygon": poly, "randaug": aug, "area": list(area), "draws": list(draws)})
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    out["hint_image_png"] = np.frombuffer(buf.getvalue(), np.uint8)
    out["meta_json"] = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), np.uint8)
    np.savez_compressed(os.path.join(HERE, "reference_render.npz"), **out)
    print("wrote", os.path.join(HERE, "reference_render.npz"), len(out), "arrays")


if __name__ == "__main__":
    main()
