"""OCR scoring end to end: benchmark texts rendered with the shipped fonts at their polygons, read back by
the converted PP-OCRv3 weights, and the ``anytext2-eval ocr`` command-line contract."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from eval_helpers import make_benchmark, paste_line

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from anytext2_diffusers.evaluation import (  # noqa: E402
    BenchmarkError,
    BenchmarkItem,
    BenchmarkLine,
    PPOCRReader,
    crop_item_lines,
    evaluate_ocr,
    load_benchmark,
)
from anytext2_diffusers.evaluation.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def reader():
    from anytext2_diffusers.models.ocr import convert_onnx

    return PPOCRReader(convert_onnx())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("bench"), num_samples=2)


def test_rendered_benchmark_texts_are_read_back(rendered, reader):
    bench, images = rendered
    summary, scores = evaluate_ocr(images, bench, reader, num_samples=2)
    wrong = [(s.image, s.gt, s.pred) for s in scores.lines if s.sen_acc < 1]
    print(json.dumps({k: summary[k] for k in ("sen_acc", "ned", "lines", "per_language")}), wrong)
    assert summary["lines"] == 32 and summary["images_scored"] == 12 and summary["missing_images"] == 0
    assert summary["sen_acc"] >= 0.9, wrong
    assert summary["ned"] >= 0.95, wrong
    assert set(summary["per_language"]) == {"Latin", "Chinese"}
    assert summary["per_language"]["Chinese"]["lines"] == 14 and summary["per_language"]["Chinese"]["sen_acc"] >= 0.9


def _shuffled(bench, tmp_path):
    """The same benchmark with every line's text moved to another line (a derangement)."""
    content = json.loads(bench.read_text(encoding="utf-8"))
    anns = [a for rec in content["data_list"] for a in rec["annotations"]]
    texts = [a["text"] for a in anns]
    order = list(range(len(texts)))
    rng = random.Random(0)
    while any(i == j or texts[i] == texts[j] for i, j in enumerate(order)):
        rng.shuffle(order)
    for a, j in zip(anns, order):
        a["text"] = texts[j]
    out = tmp_path / "shuffled.json"
    out.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return out


def test_cli_ocr_contract_and_shuffled_texts_score_low(rendered, tmp_path, capsys):
    bench, images = rendered
    shuffled = _shuffled(bench, tmp_path)
    report = tmp_path / "out" / "ocr_shuffled.json"
    code = main(["ocr", "--images", str(images), "--benchmark", str(shuffled), "--num_samples", "2",
                 "--report", str(report)])  # fmt: skip
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["lines"] == 32 and result["sen_acc"] < 0.1 and result["ned"] < 0.5
    assert set(result["per_language"]) == {"Latin", "Chinese"}
    assert all({"sen_acc", "ned", "lines"} <= set(v) for v in result["per_language"].values())
    full = json.loads(report.read_text(encoding="utf-8"))
    assert len(full["details"]) == 32 and {"gt", "pred", "sen_acc", "ned", "image"} <= set(full["details"][0])
    assert "Sen.ACC" in report.with_suffix(".md").read_text(encoding="utf-8")


def test_pluggable_recognizer_and_original_image_names(tmp_path):
    """Any callable crops -> strings works; an image named ``{img_name}`` itself is scored as one sample."""
    canvas = np.full((512, 512, 3), 128, np.uint8)
    poly = paste_line(canvas, "hello", "NotoSans-Regular.ttf", 0.0, (200, 200))
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(canvas).save(tmp_path / "imgs" / "real.png")
    item = BenchmarkItem("real.png", "caption", [BenchmarkLine("hello", poly), BenchmarkLine("你好", poly)])
    seen = []

    def fake(crops):
        seen.extend(crops)
        return ["hello", "你"]

    summary, _ = evaluate_ocr(tmp_path / "imgs", [item], fake)
    assert summary["images_scored"] == 1 and summary["lines"] == 2
    assert summary["sen_acc"] == 0.5 and summary["ned"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["per_language"]["Chinese"]["ned"] == 0.5
    assert all(c.dtype == np.uint8 and c.ndim == 3 and c.shape[1] > c.shape[0] for c in seen)


def test_tall_line_is_turned_and_crop_scales_with_the_image(reader):
    """A line written top-to-bottom yields a tall crop that the recogniser turns upright; the polygon
    frame (512) is scaled to a 1024 image."""
    canvas = np.full((1024, 1024, 3), 90, np.uint8)
    poly = paste_line(canvas, "Summer Party", "DejaVuSans.ttf", -90.0, (500, 480), size=80)
    item = BenchmarkItem("x.jpg", "", [BenchmarkLine("Summer Party", poly / 2)])
    (crop,) = crop_item_lines(canvas, item)
    assert crop.shape[0] > 1.2 * crop.shape[1]
    assert reader([crop]) == ["Summer Party"]


def test_missing_images_fail_with_their_names_unless_skipped(rendered, tmp_path, capsys):
    bench, images = rendered
    items = load_benchmark(bench)
    with pytest.raises(BenchmarkError, match=r"12 image\(s\) missing .*page000_2\.jpg"):
        evaluate_ocr(images, items, lambda crops: [""] * len(crops), num_samples=4)
    summary, _ = evaluate_ocr(images, items[:1], lambda crops: [""] * len(crops), num_samples=3, skip_missing=True)
    assert summary["missing_images"] == 1 and summary["images_scored"] == 2 and summary["sen_acc"] == 0.0
    assert main(["ocr", "--images", str(tmp_path), "--benchmark", str(bench), "--recognizer", "builtins:list"]) == 2
    assert "missing" in capsys.readouterr().err
