"""Input handling of AnyText2Pipeline: prompts, the line/blob order rule, sizes, fonts, colours, errors."""

import logging

import numpy as np
import pytest
import torch

from anytext2_diffusers.data.fonts import BUNDLED_FONT_DIR
from anytext2_diffusers.pipelines import inputs as I

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(size, boxes):
    m = np.zeros(size, np.uint8)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = 255
    return m


def test_parse_quoted_texts():
    assert I.parse_quoted_texts('a sign "Hello", \u201cWorld\u201d') == ("a sign *, *", ["Hello", "World"])
    assert I.parse_quoted_texts("no quotes") == ("no quotes", [])
    assert I.default_text_caption(2) == "Text says * , * . "


def test_blob_order_rows_of_102_px_then_left_to_right():
    # centres: A (y 20, x 300), B (y 60, x 40) share the 0..101 band -> B before A; C (y 150) is the next row
    m = blobs((256, 400), [(10, 30, 280, 320), (50, 70, 20, 60), (140, 160, 100, 140)])
    order = [tuple(np.argwhere(b).mean(0).round().astype(int)) for b in I.separate_blobs(m)]
    assert [x for _, x in order] == [40, 300, 120]
    horizontal = [tuple(np.argwhere(b).mean(0).round().astype(int)) for b in I.separate_blobs(m, "horizontal")]
    assert [x for _, x in horizontal] == [40, 120, 300]
    tiny_blob = blobs((64, 64), [(0, 4, 0, 4)])  # 16 px < 20: noise
    assert I.separate_blobs(tiny_blob > 0) == []


def test_edit_size_rule():
    assert I.edit_size(1500, 1000) == (1024, 640)  # 1024 x 683 -> multiples of 64
    assert I.edit_size(500, 700) == (448, 640)
    assert I.edit_size(512, 512) == (512, 512)


def test_lines_pair_with_blobs_and_extra_blobs_stay_positions(pipe, caplog):
    m = blobs((64, 64), [(4, 16, 4, 60), (30, 42, 4, 60), (48, 60, 4, 60)])
    with caplog.at_level(logging.WARNING):
        batch, crops = pipe.prepare_conditions("p", texts=["Top", "Mid"], positions=m)
    assert "extra blobs" in caplog.text
    assert batch.n_lines.tolist() == [2] and batch.line_valid[0].tolist() == [True, True, False]
    assert batch.text[0] == ["Top", "Mid", " "]
    rows = [np.argwhere(batch.position[0, j, 0].numpy())[:, 0].mean() for j in range(3)]
    assert rows == sorted(rows)  # top to bottom
    assert batch.glyphs.any() and batch.glyph_line[0, :2].any() and not batch.glyph_line[0, 2].any()
    assert crops is None and not batch.font_hint.any()  # no font given: no font hint


def test_polygons_and_mask_lists(pipe):
    polys = [np.array([[4, 4], [60, 4], [60, 20], [4, 20]]), np.array([[4, 36], [60, 36], [60, 56], [4, 56]])]
    a, _ = pipe.prepare_conditions("p", texts=["A", "B"], positions=polys, height=64, width=64)
    masks = [blobs((64, 64), [(4, 21, 4, 61)]) > 0, blobs((64, 64), [(36, 57, 4, 61)]) > 0]
    b, _ = pipe.prepare_conditions("p", texts=["A", "B"], positions=masks)
    assert a.position[0, :, 0].sum((1, 2)).tolist()[0] > 0
    assert torch.equal(a.position, b.position)


def test_font_file_and_font_image_and_colors(pipe):
    m = blobs((64, 64), [(4, 20, 4, 60), (36, 56, 4, 60)])
    font = str(BUNDLED_FONT_DIR / "NotoSerif-Regular.ttf")
    crop = np.full((32, 96, 3), 255, np.uint8)
    crop[10:22, 10:80] = 0  # dark strokes on white
    batch, crops = pipe.prepare_conditions(
        "p", texts=["Ab", "Cd"], positions=m, fonts=[font, crop], colors=[(255, 0, 0), None]
    )
    assert batch.font_hint.any()  # line 0 rendered with its font inside its polygon
    assert not (batch.font_hint[0, 0] & batch.position[0, 1, 0]).any()  # nothing in line 1's place
    assert crops[0][0] is None and crops[0][1].dtype == bool and crops[0][1].any()
    assert batch.color[0, :2].tolist() == [[255, 0, 0], [500, 500, 500]]
    out = pipe(
        prompt="p",
        texts=["Ab", "Cd"],
        positions=m,
        fonts=[font, crop],
        colors=[(255, 0, 0), None],
        num_inference_steps=1,
        output_type="latent",
    )
    assert torch.isfinite(out.images).all()
    assert I.parse_color("#ff8000") == (255, 128, 0)
    with pytest.raises(ValueError, match="RGB"):
        I.parse_color((300, 0, 0))


def test_long_text_is_cut_with_a_warning(pipe, caplog):
    m = blobs((64, 64), [(4, 20, 4, 60)])
    with caplog.at_level(logging.WARNING):
        batch, _ = pipe.prepare_conditions("p", texts=["x" * 25], positions=m)
    assert batch.text[0][0] == "x" * 20 and "max_chars" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(texts=["a", "b"], positions=blobs((64, 64), [(4, 20, 4, 60)])), "2 text lines but 1 position"),
        (dict(texts=["a"], positions=np.zeros((64, 64), np.uint8)), "positions is empty"),
        (dict(texts=["a"]), "positions are needed"),
        (dict(texts=["a"], positions=blobs((64, 64), [(4, 20, 4, 60)]), mode="edit"), "needs `image`"),
        (dict(texts=["a"], positions=blobs((64, 64), [(4, 20, 4, 60)]), height=100, width=64), "multiples of 64"),
        (dict(texts=["a"], positions=blobs((64, 64), [(4, 20, 4, 60)]), height=128, width=128), "mask is 64x64"),
        (dict(texts=["a"], positions=blobs((64, 64), [(4, 20, 4, 60)]), mode="paint"), "mode must be"),
        (dict(texts=["a"], positions=[np.zeros((64, 64), bool)]), "is empty"),
        (
            dict(
                texts=["a"],
                positions=blobs((64, 64), [(4, 20, 4, 60)]),
                mode="edit",
                image=np.zeros((40, 40, 3), np.uint8),
            ),
            "too small",
        ),
        (dict(texts=["a"], positions=blobs((64, 64), [(4, 20, 4, 60)]), fonts=[None, None]), "2 fonts for 1"),
    ],
)
def test_bad_input_raises_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(prompt="p", num_inference_steps=1, output_type="latent", **kwargs)


def test_call_level_errors(pipe):
    m = blobs((64, 64), [(4, 20, 4, 60)])
    with pytest.raises(ValueError, match="latents have shape"):
        pipe(prompt="p", texts=["a"], positions=m, num_inference_steps=1, latents=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="generators"):
        pipe(prompt="p", texts=["a"], positions=m, num_inference_steps=1, generator=[torch.Generator()] * 2)


def test_image_without_text(pipe):
    """No texts and no positions: the reference's single empty line, plain text-to-image."""
    batch, _ = pipe.prepare_conditions("a landscape", height=64, width=64)
    assert batch.n_lines.tolist() == [1] and batch.text[0] == [" "] and not batch.position.any()
    out = pipe(prompt="a landscape", height=64, width=64, num_inference_steps=1, output_type="latent")
    assert out.images.shape == (1, 4, 8, 8)


def test_missing_or_broken_font_file_is_named(pipe, tmp_path):
    m = blobs((64, 64), [(4, 20, 4, 60)])
    with pytest.raises(ValueError, match="fonts\\[0\\]: /nope/font.ttf: no such font file"):
        pipe(prompt="p", texts=["a"], positions=m, fonts=["/nope/font.ttf"], num_inference_steps=1)
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    with pytest.raises(ValueError, match=f"fonts\\[0\\]: {broken}: not a font FreeType can open"):
        pipe.prepare_conditions("p", texts=["a"], positions=m, fonts=[broken])


def test_empty_texts_and_undrawable_characters_warn(pipe, caplog):
    m = blobs((64, 64), [(4, 20, 4, 60)])
    font = str(BUNDLED_FONT_DIR / "NotoSans-Regular.ttf")
    with caplog.at_level(logging.WARNING):
        pipe.prepare_conditions("p", texts=[""], positions=m)
    assert "texts[0] is empty" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe.prepare_conditions("p", texts=["a\U0001fae0"], positions=m, fonts=[font])
    assert "has no glyph for '\U0001fae0'" in caplog.text and "no bundled font draws all of" in caplog.text


def test_texts_empty_with_a_mask_says_so_without_the_crop_fallback_warning(pipe, caplog, recwarn):
    m = blobs((64, 64), [(4, 20, 4, 60)])
    with caplog.at_level(logging.WARNING):
        pipe(prompt="p", texts=[], positions=m, num_inference_steps=1, output_type="latent")
    assert "texts is empty: the 1 position blob(s) are kept as positions without text" in caplog.text
    assert not [w for w in recwarn if "fallback box" in str(w.message)]


def test_a_0_1_uint8_mask_is_explained():
    with pytest.raises(ValueError, match="counts only pixels of 255 .* pass mask \\* 255 or a bool mask"):
        I.to_binary_mask(blobs((64, 64), [(4, 20, 4, 60)]) // 255)
