"""AnyText2 sample semantics on crafted records, purity, determinism across workers, faults."""

import copy
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from anytext2_diffusers.data import (
    AnyText2TrainDataset,
    Collator,
    DataConfig,
    EpochSampler,
    FaultCounter,
    FontConfigError,
    FontRegistry,
    collate_samples,
)
from anytext2_diffusers.data.batch import pack_bits, unpack_bits
from anytext2_diffusers.data.fonts import BUNDLED_FONT_DIR, load_font
from anytext2_diffusers.data.render import render_polygons
from anytext2_diffusers.data.sample import TEXT_CAPTION_PHRASES, truncate_caption

PHRASE_RE = "(" + "|".join(re.escape(p) for p in TEXT_CAPTION_PHRASES) + ")"
ROT = [[100, 300], [330, 193], [351, 238], [121, 345]]
VERT = [[400, 100], [450, 100], [450, 400], [400, 400]]


def image_bytes(size=512, texts=()):
    im = Image.new("RGB", (size, size), (220, 210, 190))
    d = ImageDraw.Draw(im)
    for (x, y), t in texts:
        d.text((x, y), t, font=load_font(str(BUNDLED_FONT_DIR / "NotoSans-Regular.ttf"), 40), fill=(10, 10, 10))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


IMG = image_bytes(texts=[((70, 62), "hello"), ((120, 240), "AnyText2")])


def row(annotations, caption="a sign on a wall", wm_score=None, img=IMG, name="x.png"):
    return {
        "image": {"bytes": img, "path": name},
        "img_name": name,
        "caption": caption,
        "wm_score": wm_score,
        "annotations": annotations,
        "source": "test",
    }


def ann(polygon, text, language="Latin", color=(200, 30, 30), valid=True):
    return {
        "polygon": [list(map(float, p)) for p in polygon],
        "text": text,
        "language": language,
        "color": None if color is None else list(color),
        "valid": valid,
        "pos": None,
    }


def box(x, y, w=80, h=30):
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def render_one(rows, cfg=None, index=0, seed=0, epoch=0):
    ds = AnyText2TrainDataset(rows, cfg or DataConfig(), seed=seed)
    return ds[(epoch, index)]


# ---------------------------------------------------------------------------------------------
# crafted records (the reference's behaviour)
# ---------------------------------------------------------------------------------------------
def test_rotated_line():
    s = render_one([row([ann(ROT, "AnyText2")])])
    assert s.n_lines == 1 and s.texts == ["AnyText2"] and s.languages == ["Latin"]
    assert re.fullmatch(PHRASE_RE + r"\* \. ", s.text_caption)
    poly_mask = render_polygons([np.array(ROT)], 512)
    assert s.glyphs.sum() > 500 and poly_mask[s.glyphs].mean() > 0.97
    inter = (s.positions[0] & poly_mask).sum() / poly_mask.sum()
    assert inter > 0.9  # position = polygon (possibly dilated/eroded by a pixel or two)
    assert s.colors.tolist() == [[200, 30, 30]]
    assert s.image.shape == (3, 512, 512) and s.image.dtype == np.uint8
    assert s.glyph_lines.shape == (1, 80, 512) and s.glyph_lines.sum() > 500
    assert not s.edit_mode and not s.masked_image.any()


def test_vertical_cjk_line_and_traditional_split():
    s = render_one([row([ann(VERT, "欢迎光临", "Chinese"), ann(box(50, 400), "歡迎", "Chinese")])])
    assert sorted(zip(s.texts, s.languages)) == [("欢迎光临", "Chinese_sim"), ("歡迎", "Chinese_tra")]
    ys, _ = np.nonzero(s.glyphs[:, 380:470])
    assert ys.max() - ys.min() > 200  # the vertical line's characters run down the box


def test_more_than_max_lines_go_to_inv_mask():
    polys = [box(20 + 90 * (i % 5), 40 + 120 * (i // 5)) for i in range(8)]
    rows = [row([ann(p, f"w{i}") for i, p in enumerate(polys)])]
    chosen = set()
    for seed in range(4):
        s = render_one(rows, seed=seed)
        assert s.n_lines == 5 and len(s.text_caption.split("*")) == 6
        left = [p for i, p in enumerate(polys) if f"w{i}" not in s.texts]
        assert len(left) == 3
        np.testing.assert_array_equal(s.inv_mask, render_polygons([np.array(p) for p in left], 512))
        chosen.add(tuple(s.texts))
    assert len(chosen) > 1  # random selection and order


def test_invalid_polygon_in_inv_mask_and_cleared_in_edit_mode():
    rows = [row([ann(box(50, 50), "hello"), ann(box(300, 300, 100, 40), "blurred", valid=False)])]
    s = render_one(rows)
    assert s.texts == ["hello"]
    np.testing.assert_array_equal(s.inv_mask, render_polygons([np.array(box(300, 300, 100, 40))], 512))
    s = render_one(rows, DataConfig(mask_ratio=1.0))
    assert s.edit_mode and not s.inv_mask.any()  # the reference clears invalid polygons in edit mode


def test_edit_mode_masked_image_equals_reference_formula():
    rows = [row([ann(box(60, 60, 240, 60), "hello"), ann(ROT, "AnyText2")])]
    samples = [render_one(rows, DataConfig(mask_ratio=1.0)), render_one(rows, DataConfig(mask_ratio=0.0))]
    b = collate_samples(samples)
    assert b.edit_mode.tolist() == [True, False]
    img = samples[0].image.transpose(1, 2, 0).astype(np.float32) / 127.5 - 1.0
    mask = samples[0].positions.any(axis=0)[..., None].astype(np.float32)
    expected = np.clip(img - mask * 10, -1, 1).transpose(2, 0, 1)
    torch.testing.assert_close(b.masked_image_float()[0], torch.from_numpy(expected))
    assert (b.masked_image_float()[1] == -1).all()
    torch.testing.assert_close(b.image_float()[0], torch.from_numpy(img.transpose(2, 0, 1)))


def test_no_text_gets_placeholder_line():
    s = render_one([row([])])
    assert s.texts == [" "] and s.languages == ["Latin"] and s.colors.tolist() == [[500, 500, 500]]
    assert re.fullmatch(PHRASE_RE + r"\* \. ", s.text_caption)
    sq = render_polygons([np.array(box(10, 10, 90, 90))], 512)
    assert (s.positions[0] & sq).sum() / sq.sum() > 0.9 and s.positions[0][200:, 200:].sum() == 0
    assert s.glyphs.sum() == 0 and s.glyph_lines.sum() == 0


def test_caption_rules():
    s = render_one([row([ann(box(5, 5), "a")], caption="a shop", wm_score=0.7)])
    assert s.image_caption == "a shop with watermarks . "
    s = render_one([row([ann(box(5, 5), "a")], caption="a shop", wm_score=0.2)])
    assert s.image_caption == "a shop no watermarks . "
    long = ". ".join(" ".join(f"{'abcdefgh'[i]}" for j in range(30)) for i in range(8))  # 8 sentences x 30 words
    out = truncate_caption(long + ". ", 128, np.random.default_rng(0))
    words = out.replace(".", " ").split()
    assert words[:30] == ["a"] * 30  # the first sentence is always kept
    assert 120 <= len(words) <= 128
    assert truncate_caption(long, 128, np.random.default_rng(1)) != out  # other sentences drawn at random
    assert len(truncate_caption("x " * 400, 128, np.random.default_rng(0)).split()) == 128
    assert truncate_caption("short one. ", 128, np.random.default_rng(0)) == "short one. "


def test_max_chars_and_color_prob():
    s = render_one([row([ann(box(5, 5, 400, 40), "abcdefghijklmnopqrstuvwxyz")])], DataConfig(color_prob=0.0))
    assert s.texts == ["abcdefghijklmnopqrst"] and s.colors.tolist() == [[500, 500, 500]]


def test_resolution_1024_scales_polygons():
    big = image_bytes(1024)
    s = render_one([row([ann([[p[0] * 2, p[1] * 2] for p in ROT], "AnyText2")], img=big)], DataConfig(resolution=1024))
    assert s.image.shape == (3, 1024, 1024) and s.positions.shape == (1, 1024, 1024)
    s512 = render_one([row([ann([[p[0] * 2, p[1] * 2] for p in ROT], "AnyText2")], img=big)])
    mask = render_polygons([np.array(ROT)], 512)  # a 1024 image's polygon is scaled to 512
    assert (s512.positions[0] & mask).sum() / mask.sum() > 0.9


def test_batch_fields_dtypes_and_packing():
    rows = [row([ann(ROT, "AnyText2"), ann(VERT, "欢迎", "Chinese", color=None)]), row([])]
    ds = AnyText2TrainDataset(rows, DataConfig(font_hint_prob=1.0), seed=0)
    samples = [ds[0], ds[1]]
    b = collate_samples(samples, 5)
    assert b.image.dtype == torch.uint8 and b.image.shape == (2, 3, 512, 512)
    assert b.glyphs.shape == (2, 1, 512, 512) and b.glyphs.dtype == torch.bool
    assert b.position.shape == (2, 5, 1, 512, 512) and b.glyph_line.shape == (2, 5, 1, 80, 512)
    assert b.font_hint.shape == b.inv_mask.shape == (2, 1, 512, 512)
    assert b.color.shape == (2, 5, 3) and b.color[0, 1].tolist() == [500, 500, 500]
    assert b.n_lines.tolist() == [2, 1] and b.line_valid.tolist() == [
        [True, True, False, False, False],
        [True, False, False, False, False],
    ]
    assert b.text[1] == [" "] * 5 and len(b.language[0]) == 5
    np.testing.assert_array_equal(b.position[0, :2, 0].numpy(), samples[0].positions)
    np.testing.assert_array_equal(b.glyphs[0, 0].numpy(), samples[0].glyphs)
    assert b.font_hint[0].any()
    assert b.nbytes() / len(b) < 2.5 * 2**20
    moved = b.to("cpu")
    assert torch.equal(moved.position, b.position)
    x = np.random.default_rng(0).random((3, 5, 64)) < 0.5
    np.testing.assert_array_equal(unpack_bits(pack_bits(x)).numpy(), x)


# ---------------------------------------------------------------------------------------------
# purity and determinism
# ---------------------------------------------------------------------------------------------
def _same(a, b):
    for k in ("image", "glyph_lines", "positions", "glyphs", "font_hint", "inv_mask", "colors"):
        if not np.array_equal(getattr(a, k), getattr(b, k)):
            return False
    return (a.texts, a.languages, a.image_caption, a.text_caption, a.edit_mode) == (
        b.texts,
        b.languages,
        b.image_caption,
        b.text_caption,
        b.edit_mode,
    )


def test_five_reads_are_identical_and_rows_unchanged():
    polys = [box(20 + 90 * (i % 5), 40 + 120 * (i // 5)) for i in range(7)]
    rows = [
        row(
            [ann(p, f"w{i}") for i, p in enumerate(polys)]
            + [ann([[-30, 500], [40, 500], [40, 530]], "edge"), ann(box(300, 400), "x", valid=False)],
            caption="first part. second part",
            wm_score=0.1,
        )
    ]
    before = copy.deepcopy(rows)
    ds = AnyText2TrainDataset(rows, DataConfig(mask_ratio=0.5, font_hint_prob=1.0), seed=3)
    reads = [ds[0] for _ in range(5)]
    assert all(_same(reads[0], r) for r in reads[1:])
    assert reads[0].image_caption.count(". ") == 2  # the reference would grow ". " on every read
    assert rows == before
    assert any(not _same(ds[(e, 0)], reads[0]) for e in range(1, 4))  # a new epoch draws anew


def test_identical_samples_across_worker_counts(tmp_path):
    from anytext2_diffusers.data import load_anyword, make_demo_data

    path = make_demo_data(str(tmp_path / "demo"), 4, seed=1)
    rows = load_anyword(path, cache_dir=str(tmp_path / "hf"))["train"]
    ds = AnyText2TrainDataset(rows, DataConfig(mask_ratio=0.5), seed=7)
    sampler = EpochSampler(len(ds), seed=7)
    sampler.set_epoch(2)

    def run(workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=Collator(5))
        return list(dl)

    a, b = run(0), run(2)
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image) and x.text == y.text and x.text_caption == y.text_caption
        for k in x.packed:
            assert torch.equal(x.packed[k], y.packed[k])


# ---------------------------------------------------------------------------------------------
# record faults: counted, logged once, neutralised
# ---------------------------------------------------------------------------------------------
FAULT_ROWS = {
    "missing_image": row([ann(box(5, 5), "a")], img=None, name="/nonexistent/x.png"),
    "corrupt_image": row([ann(box(5, 5), "a")], img=b"\x89PNG garbage"),
    "bad_polygon": row([ann([[1, 1], [5, 5]], "two"), ann([[float("nan"), 3], [9, 9], [3, 9]], "nan")]),
    "polygon_outside": row([ann(box(900, 900), "far")]),
    "float_polygon": row([ann([[50.5, 50.2], [250.7, 50], [250, 120], [50, 120.4]], "float")]),
    "empty_text": row([ann(box(50, 50), "   ")]),
    "missing_glyph": row([ann(box(50, 50), "ok \u0928")]),
    "unknown_language": row([ann(box(50, 50), "Grüße", "Klingon")]),
    "missing_caption": row([ann(box(50, 50), "a")], caption=None),
    "missing_color": row([ann(box(50, 50), "a", color=None)]),
    "placeholder_in_caption": row([ann(box(50, 50), "a")], caption="a * star"),
}
GOOD = row([ann(ROT, "AnyText2")])


@pytest.mark.parametrize("kind", sorted(FAULT_ROWS))
def test_record_fault_is_counted_and_neutralised(kind, caplog):
    rows = [FAULT_ROWS[kind], GOOD]
    s = render_one(rows)
    assert kind in s.faults
    assert s.image.shape == (3, 512, 512) and s.n_lines >= 1
    if kind in ("missing_image", "corrupt_image"):
        assert s.index == 1 and s.texts == ["AnyText2"]  # the next record stands in
    if kind in ("bad_polygon", "polygon_outside"):
        assert s.texts == [" "]  # every line dropped -> placeholder
    if kind == "empty_text":
        assert s.inv_mask[60:70, 60:70].all()
    if kind == "missing_glyph":
        assert s.texts == ["ok "]
    if kind == "unknown_language":
        assert s.glyphs.sum() > 0
    if kind == "placeholder_in_caption":
        assert "*" not in s.image_caption
    if kind == "missing_color":
        assert s.colors.tolist() == [[500, 500, 500]]


def test_fault_summary_over_an_epoch(caplog):
    rows = list(FAULT_ROWS.values()) + [GOOD, GOOD]
    ds = AnyText2TrainDataset(rows, DataConfig(), seed=0)
    counter = FaultCounter()
    for b in torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=Collator(5)):
        counter.update(b)
    summary = counter.summary()
    assert counter.samples == len(rows)
    for kind in FAULT_ROWS:
        assert f"{kind}=" in summary
    # counts are events while rendering: the bad-polygon record (2 bad lines) is rendered for itself and
    # as the stand-in of the missing and of the corrupt image before it
    assert counter.counts["missing_image"] == 1 and counter.counts["corrupt_image"] == 2
    assert counter.counts["bad_polygon"] == 6


def test_fault_is_logged_once_per_kind(caplog):
    from anytext2_diffusers.data import sample as sample_mod

    sample_mod._logged_kinds.discard("missing_color")
    rows = [FAULT_ROWS["missing_color"]] * 3
    with caplog.at_level("WARNING"):
        ds = AnyText2TrainDataset(rows, DataConfig(), seed=0)
        for i in range(3):
            ds[i]
    assert sum("missing_color" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------------
# configuration faults: fail fast, naming the file
# ---------------------------------------------------------------------------------------------
def test_font_mapping_faults(tmp_path):
    bad = tmp_path / "lang_fonts.json"
    bad.write_text(json.dumps({"languages": {"Latin": []}}))
    with pytest.raises(FontConfigError, match="lang_fonts.json.*'Latin' has no usable font"):
        FontRegistry.from_path(bad)
    bad.write_text(json.dumps({"languages": {"Latin": ["nope.ttf"]}}))
    with pytest.raises(FontConfigError, match="nope.ttf"):
        FontRegistry.from_path(tmp_path)
    bad.write_text("{not json")
    with pytest.raises(FontConfigError, match="lang_fonts.json"):
        FontRegistry.from_path(bad)
    with pytest.raises(FontConfigError, match="missing.yaml"):
        FontRegistry.from_path(tmp_path / "missing.yaml")


def test_font_mapping_yaml_and_reference_keys(tmp_path):
    f = tmp_path / "fonts.yaml"
    f.write_text(
        f"languages:\n  en: {{fonts: [{BUNDLED_FONT_DIR / 'DejaVuSans.ttf'}]}}\n"
        "  Chinese_sim: [NotoSansSC-Subset.otf]\n"
    )
    reg = FontRegistry.from_path(f)
    assert reg.fonts_for("Latin") == ([str(BUNDLED_FONT_DIR / "DejaVuSans.ttf")], True)
    assert reg.fonts_for("Chinese_sim")[0][0].endswith("NotoSansSC-Subset.otf")
    assert reg.fonts_for("Arabic")[1] is False
    s = AnyText2TrainDataset([GOOD], DataConfig(font_config=str(f)), seed=0)[0]
    assert s.glyphs.sum() > 0
