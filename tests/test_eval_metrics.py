"""Evaluation formulas on crafted inputs: NED / Sen.ACC by hand, FID against scipy, CLIPScore, benchmark
parsing and reports. No model is loaded here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from anytext2_diffusers.evaluation import (
    PUBLISHED_ANYTEXT2,
    BenchmarkError,
    CharIds,
    OCRScores,
    clip_score_from_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    levenshtein,
    load_benchmark,
    normalized_edit_similarity,
    sample_stem,
    sentence_accuracy,
    write_report,
)
from anytext2_diffusers.evaluation.metrics import LineScore

TABLE = ["sos", "a", "b", "c", "h", "e", "l", "o", " "]  # blank, dictionary, appended space (= unknown id)


@pytest.mark.parametrize(
    "pred, gt, distance",
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("", "", 0), ("flaw", "lawn", 2), ("abc", "abc", 0)],
)
def test_levenshtein_textbook_cases(pred, gt, distance):
    assert levenshtein(pred, gt) == distance == levenshtein(gt, pred)


@pytest.mark.parametrize(
    "pred, gt, sen, ned",
    [
        ("hello", "hello", 1.0, 1.0),
        ("helllo", "hello", 0.0, 1 - 1 / 6),  # one insertion, longest is the prediction
        ("hallo", "hello", 0.0, 1 - 1 / 5),  # one substitution ('a' and 'e' are both in the table)
        ("helo", "hello", 0.0, 1 - 1 / 5),  # one deletion
        ("", "hello", 0.0, 0.0),  # empty prediction
        ("Hello", "hello", 0.0, 1 - 1 / 5),  # 'H' is unknown -> last id, differs from 'h': no case folding
        ("he☃", "he★", 0.0, 1.0),  # two different unknown characters share the last id
        ("he ", "he★", 0.0, 1.0),  # ... and so does the space (the appended last class)
        ("hello ", "hello", 0.0, 1 - 1 / 6),  # a trailing space is not stripped
        ("olleh", "hello", 0.0, 1 - 4 / 5),
        ("", "", 1.0, 1.0),
    ],
)
def test_sentence_accuracy_and_ned_by_hand(pred, gt, sen, ned):
    ids = CharIds(TABLE)
    assert sentence_accuracy(pred, gt) == sen
    assert normalized_edit_similarity(pred, gt, ids) == pytest.approx(ned, abs=1e-12)


def test_char_ids_follow_the_reference_table_rules():
    ids = CharIds(["sos", "x", "y", "x", " "])  # duplicated entry keeps its last index, as a dict comprehension
    assert ids("xy?") == [3, 2, 4]
    default = CharIds()  # the shipped PP-OCR table: 6625 classes
    assert default("中A")[0] != default.unknown and default("\u2603") == [6624]


def test_scores_average_over_all_lines_and_per_language():
    scores = OCRScores()
    rows = [("Latin", 1, 1.0), ("Latin", 0, 0.5), ("Chinese", 1, 1.0), ("Chinese", 0, 0.0), ("Chinese", 1, 1.0)]
    for i, (lang, acc, ned) in enumerate(rows):
        scores.add(LineScore(f"x_{i}.jpg", 0, lang, "gt", "pred", acc, ned))
    s = scores.summary()
    assert s["lines"] == 5 and s["sen_acc"] == pytest.approx(3 / 5) and s["ned"] == pytest.approx(3.5 / 5)
    assert s["per_language"]["Latin"] == {"sen_acc": 0.5, "ned": 0.75, "lines": 2}
    assert s["per_language"]["Chinese"]["sen_acc"] == pytest.approx(2 / 3)


TWO_POINTS = [[0, 0], [1, 1]]


def _scipy_fid(f1, f2):
    """Independent FID: pytorch-fid's formula with scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("dim, n", [(4, 300), (16, 200), (64, 500)])
def test_fid_matches_scipy_sqrtm(dim, n):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(dim, dim))
    f1 = rng.normal(size=(n, dim)) @ a
    f2 = rng.normal(0.3, 1.5, size=(n, dim)) @ (a + 0.2 * rng.normal(size=(dim, dim)))
    ours = fid_from_features(f1, f2)
    assert ours == pytest.approx(_scipy_fid(f1, f2), rel=1e-7, abs=1e-8)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(f2, f1) == pytest.approx(ours, rel=1e-9)


def test_fid_closed_form_for_diagonal_gaussians():
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])  # a singular covariance too
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(m1, np.diag(v1), m2[:2], np.diag(v2[:2]))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))


def test_clip_score_formula():
    img = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = np.array([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cos = 1, -1 (clipped to 0), 1/sqrt(2)
    np.testing.assert_allclose(clip_score_from_features(img, txt), [2.5, 0.0, 2.5 / np.sqrt(2)], rtol=1e-12)


def _write_json(path, content):
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def test_benchmark_line_selection_follows_the_reference(tmp_path):
    square = [[0, 0], [50, 0], [50, 20], [0, 20]]
    anns = [{"polygon": square, "text": "x" * 30, "language": "Latin"}]
    anns += [{"polygon": [], "text": "no polygon"}, {"polygon": square, "text": "invalid", "valid": False}]
    anns += [{"polygon": square, "text": f"line{i}"} for i in range(25)]
    path = _write_json(
        tmp_path / "b.json",
        {"data_list": [{"img_name": "0001.jpg", "caption": "a *", "annotations": anns}, {"img_name": "e.png"}]},
    )
    items = load_benchmark(path)
    assert [it.stem for it in items] == ["0001", "e"] and items[1].lines == []
    lines = items[0].lines
    assert len(lines) == 20 and lines[0].text == "x" * 20 and lines[0].language == "Latin"
    assert [line.text for line in lines[1:3]] == ["line0", "line1"] and lines[1].language is None
    assert lines[0].polygon.shape == (4, 2)
    assert sample_stem("a.b.jpg") == "a"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"images": []}, "data_list"),
        ({"data_list": [{"caption": "c"}]}, r"data_list\[0\]: missing or empty 'img_name'"),
        ({"data_list": [{"img_name": "a.jpg", "annotations": [{"polygon": TWO_POINTS, "text": "t"}]}]}, "polygon"),
        ({"data_list": [{"img_name": "a.jpg", "annotations": [{"polygon": [[0, 0], [1, 1], [2, 0]]}]}]}, "'text'"),
        ({"data_list": [{"img_name": "a.jpg"}, {"img_name": "a.png"}]}, "repeats data_list"),
    ],
)
def test_benchmark_errors_name_file_record_and_field(tmp_path, content, message):
    path = _write_json(tmp_path / "bad.json", content)
    with pytest.raises(BenchmarkError, match=message) as err:
        load_benchmark(path)
    assert "bad.json" in str(err.value)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(tmp_path / "missing.json")


def test_report_keeps_published_figures_apart(tmp_path):
    results = [
        {
            "metric": "ocr",
            "name": "English",
            "sen_acc": 0.5,
            "ned": 0.75,
            "lines": 4,
            "recognizer": "PP-OCRv3",
            "per_language": {"Latin": {"sen_acc": 0.5, "ned": 0.75, "lines": 4}},
        },
        {"metric": "clip", "benchmark": "/data/laion_word/test1k.json", "clip_score": 0.9, "clip_model": "tiny"},
        {"metric": "fid", "name": "Chinese", "fid": 12.345},
    ]
    payload = write_report(results, tmp_path / "report.json")
    assert payload["measured"]["English"]["clip_score"] == 0.9 and payload["measured"]["Chinese"]["fid"] == 12.345
    assert payload["published_anytext2"] == PUBLISHED_ANYTEXT2
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    measured, published = md.split("## Published AnyText2 figures")
    assert "| English | 0.5000 | 0.7500 | – | 0.9000 |" in measured and "12.35" in measured
    assert "0.8175" in published and "0.7250" in published and "24.32" in published and "0.9882" in published
    assert "0.8175" not in measured


def test_report_keeps_two_models_on_one_benchmark(tmp_path):
    """Two OCR results named after the same benchmark file (two models' image folders) stay two rows."""

    def ocr(images, acc):
        return {
            "metric": "ocr",
            "benchmark": "/b/laion_word/test1k.json",
            "images": images,
            "sen_acc": acc,
            "ned": acc,
            "lines": 4,
        }

    clip = {"metric": "clip", "benchmark": "/b/laion_word/test1k.json", "images": "/runs/a/imgs", "clip_score": 0.9}
    payload = write_report([ocr("/runs/a/imgs", 0.5), ocr("/runs/b/imgs", 0.25), clip], tmp_path / "r.json")
    rows = payload["measured"]
    assert sorted(rows) == ["English (/runs/a/imgs)", "English (/runs/b/imgs)"]
    assert rows["English (/runs/a/imgs)"]["sen_acc"] == 0.5 and rows["English (/runs/a/imgs)"]["clip_score"] == 0.9
    assert rows["English (/runs/b/imgs)"]["sen_acc"] == 0.25
    payload = write_report([ocr("/runs/a/out", 0.5), ocr("/runs/b/out2", 0.25)], tmp_path / "s.json")
    assert sorted(payload["measured"]) == ["English (out)", "English (out2)"]


def test_eval_cli_convention(capsys):
    """Subcommands on the shared option mechanism: shown defaults, --no-x booleans, one-line errors."""
    import pytest as _pytest

    from anytext2_diffusers.evaluation.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["ocr"].format_help()
    assert "--skip_missing, --no-skip_missing" in help_text and "(default: 4)" in help_text
    with _pytest.raises(SystemExit) as info:
        main(["clip", "--images", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anytext2-eval: error: clip: --benchmark is required (see --help)"]
    with _pytest.raises(SystemExit):
        main(["ocr", "--image", "x", "--benchmark", "b.json"])  # no abbreviations
    assert "unrecognized arguments: --image" in capsys.readouterr().err
