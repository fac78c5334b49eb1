"""Renderer against the reference's own outputs (tests/golden, see make_golden.py) and crafted records."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from anytext2_diffusers.data import render
from anytext2_diffusers.data.fonts import BUNDLED_FONT_DIR, load_font

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "reference_render.npz"))
META = json.loads(bytes(GOLDEN["meta_json"]).decode())


def unpack(a):
    return np.unpackbits(a, axis=-1).astype(bool)


@pytest.mark.parametrize("case", META["glyph"], ids=[c["name"] for c in META["glyph"]])
def test_glyph_in_polygon_matches_reference(case):
    size = 512 * case["scale"]
    out = np.zeros((size, size), bool)
    render.render_glyph_in_polygon(
        out, str(BUNDLED_FONT_DIR / case["font"]), case["text"], np.array(case["polygon"]), case["color"], case["scale"]
    )
    ref = unpack(GOLDEN["glyph_" + case["name"]])
    # rotation goes through PIL's fixed-point affine path at a different origin: allow a few pixels
    assert (ref ^ out).sum() <= max(3, 0.002 * ref.sum()), (ref.sum(), out.sum())
    if case["name"] == "tiny":
        assert ref.sum() == 0 and out.sum() == 0


@pytest.mark.parametrize("i", range(len(META["line"])))
def test_glyph_line_matches_reference(i):
    c = META["line"][i]
    out = render.render_glyph_line(str(BUNDLED_FONT_DIR / c["font"]), c["text"])
    assert out.shape == (80, 512)
    np.testing.assert_array_equal(out, unpack(GOLDEN[f"line_{i}"]))


@pytest.mark.parametrize("i", range(len(META["pos"])))
def test_position_mask_matches_reference(i):
    c = META["pos"][i]
    out = render.render_position(np.array(c["polygon"]), 512, c["u"])
    np.testing.assert_array_equal(out, unpack(GOLDEN[f"pos_{i}"]))


@pytest.mark.parametrize("i", range(len(META["hint"])))
def test_font_hint_matches_reference(i):
    c = META["hint"][i]
    img = np.asarray(Image.open(io.BytesIO(bytes(GOLDEN["hint_image_png"]))))
    out = np.zeros((512, 512), bool)
    render.render_font_hint(
        out, img, np.array(c["polygon"]), render.FontHintDraws(*c["draws"]), c["area"], c["randaug"]
    )
    ref = unpack(GOLDEN[f"hint_{i}"])
    assert ref.sum() > 100
    # the reference augments a float image, we augment uint8: interpolation may flip a few pixels
    tol = 0.02 * ref.sum() if c["randaug"] else 0
    assert (ref ^ out).sum() <= tol


def test_morph_op_probabilities_follow_reference():
    us = (np.arange(1000) + 0.5) / 1000
    ops = [render.morph_op(u, small=False) for u in us]
    assert ops.count(("none", 0)) == 700 and ops.count(("dilate", 1)) == 100 and ops.count(("erode", 1)) == 100
    assert ops.count(("dilate", 2)) == 50 and ops.count(("erode", 2)) == 50
    small = [render.morph_op(u, small=True) for u in us]  # no erosion for tiny boxes (reference elif chain)
    assert small.count(("dilate", 2)) == 150 and small.count(("none", 0)) == 750


def test_letter_spacing_search_equals_reference_loop():
    font_path = str(BUNDLED_FONT_DIR / "NotoSans-Regular.ttf")
    rng = np.random.default_rng(0)
    for _ in range(25):
        text = "".join(rng.choice(list("abcdefgHIJK0123"), int(rng.integers(2, 9))))
        font = load_font(font_path, int(rng.integers(10, 40)))
        max_dim, min_dim = float(rng.integers(40, 600)), float(rng.integers(20, 60))
        expected = text
        for n in range(1, 100):  # the reference's loop
            l, t, r, b = font.getbbox((" " * n).join(text))
            if r - l > max_dim or b - t > min_dim:
                expected = (" " * (n - 1)).join(text)
                break
        assert render._spread_horizontal(font, text, max_dim, min_dim) == expected


def test_rotated_glyph_follows_the_polygon_direction():
    out = np.zeros((512, 512), bool)
    poly = np.array([[100, 300], [330, 193], [351, 238], [121, 345]])  # long side at ~25 deg, rising
    render.render_glyph_in_polygon(out, str(BUNDLED_FONT_DIR / "NotoSans-Regular.ttf"), "AnyText2", poly)
    ys, xs = np.nonzero(out)
    slope = np.polyfit(xs, ys, 1)[0]
    assert -0.6 < slope < -0.3  # y decreases to the right: tan(25 deg) = 0.47
    assert render.render_polygons([poly], 512)[ys, xs].mean() > 0.97


def test_vertical_cjk_stacks_characters():
    out = np.zeros((512, 512), bool)
    poly = np.array([[400, 100], [450, 100], [450, 400], [400, 400]])
    render.render_glyph_in_polygon(out, str(BUNDLED_FONT_DIR / "NotoSansSC-Subset.otf"), "欢迎光临", poly)
    ys, xs = np.nonzero(out)
    assert xs.min() >= 395 and xs.max() <= 455
    assert ys.max() - ys.min() > 200  # four characters spread down the box
    rows = out[:, 395:456].any(axis=1)
    runs = np.count_nonzero(np.diff(rows.astype(int)) == 1)
    assert runs >= 4  # separate characters with gaps between them
