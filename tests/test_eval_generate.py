"""``anytext2-eval generate`` on the tiny random pipeline: file names, reference settings, resuming,
process sharding and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from anytext2_diffusers.evaluation import generate as gen
from anytext2_diffusers.evaluation.cli import main

SQUARE = [[100, 100], [300, 100], [300, 160], [100, 160]]


def _bench(tmp_path, n=3):
    def entry(i):
        text = "hello world" if i else "你好"
        return {"img_name": f"img{i}.jpg", "caption": f'a "*" sign number {i}',
                "annotations": [{"polygon": SQUARE, "text": text}]}  # fmt: skip

    data = [entry(i) for i in range(n)]
    data.append({"img_name": "blank.jpg", "caption": "no text here", "annotations": []})
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"data_list": data}, ensure_ascii=False), encoding="utf-8")
    return path


class Recorder:
    """Stands in for the pipeline where only the calls matter; returns flat images."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        n = kwargs["num_images_per_prompt"]
        return SimpleNamespace(
            images=[Image.new("RGB", (kwargs["width"], kwargs["height"]), (k, 0, 0)) for k in range(n)]
        )


def test_reference_settings_resume_and_sharding(tmp_path):
    bench = _bench(tmp_path)
    out = tmp_path / "out"
    config = gen.GenerateConfig(str(bench), str(out), resolution=256)
    assert (config.num_samples, config.num_inference_steps, config.guidance_scale, config.seed, config.eta) == (
        4, 20, 7.5, 100, 0.0
    )  # fmt: skip
    ranks = [Recorder(), Recorder()]
    for rank, pipe in enumerate(ranks):
        state = SimpleNamespace(process_index=rank, num_processes=2, wait_for_everyone=lambda: None)
        summary = gen.generate_benchmark(pipe, config, state)
        assert summary["generated"] == 2 and summary["num_processes"] == 2 and summary["already_done"] == 2 * rank
    prompts = [c["prompt"] for r in ranks for c in r.calls]
    assert sorted(prompts) == sorted(
        ['a " " sign number 0', 'a " " sign number 1', 'a " " sign number 2', "no text here"]
    )
    first = ranks[0].calls[0]
    assert first["texts"] == ["你好"] and first["added_prompt"] == gen.EVAL_ADDED_PROMPT
    assert first["negative_prompt"].startswith("longbody") and first["num_images_per_prompt"] == 4
    np.testing.assert_allclose(first["positions"][0], np.array(SQUARE) / 2)  # 512 frame -> 256 px
    assert first["fonts"][0].endswith(("NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf"))
    blank = next(c for r in ranks for c in r.calls if c["prompt"] == "no text here")
    assert blank["texts"] == [" "]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{k}.jpg" for s in ("img0", "img1", "img2", "blank") for k in range(4))
    assert Image.open(out / "img1_3.jpg").size == (256, 256)
    # Resumable: nothing left to do; a missing file brings back its entry only.
    again = Recorder()
    assert gen.generate_benchmark(again, config)["generated"] == 0 and not again.calls
    (out / "img2_1.jpg").unlink()
    summary = gen.generate_benchmark(again, config)
    assert summary["generated"] == 1 and summary["already_done"] == 3 and again.calls[0]["prompt"].endswith("2")


def test_generate_with_the_tiny_pipeline_then_ocr(tmp_path, monkeypatch, capsys):
    from anytext2_diffusers.testing import tiny_pipeline

    pipe = tiny_pipeline()
    monkeypatch.setattr(gen, "load_pipeline", lambda path, precision, device: pipe)
    bench = _bench(tmp_path, n=1)
    out = tmp_path / "gen"
    argv = ["generate", "--pretrained_model_name_or_path", "tiny", "--benchmark", str(bench), "--output_dir", str(out)]
    assert main([*argv, "--num_samples", "2", "--resolution", "64", "--num_inference_steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["generated"] == 2 and result["benchmark_items"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["blank_0.jpg", "blank_1.jpg", "img0_0.jpg", "img0_1.jpg"]
    # The generated folder is scored end to end (random weights: any score, but a complete run).
    from anytext2_diffusers.evaluation import evaluate_ocr

    summary, _ = evaluate_ocr(out, bench, lambda crops: ["x"] * len(crops), num_samples=2)
    assert summary["lines"] == 2 and summary["skipped_items_without_lines"] == 1


@pytest.mark.parametrize("flag", ["--no-font_hint"])
def test_cli_flags_reach_the_config(tmp_path, monkeypatch, flag):
    seen = {}
    monkeypatch.setattr(gen, "load_pipeline", lambda *a: "pipe")
    monkeypatch.setattr(gen, "generate_benchmark", lambda pipe, config, state, progress: seen.update(c=config) or {})
    bench = _bench(tmp_path)
    main(["generate", "--pretrained_model_name_or_path", "x", "--benchmark", str(bench), "--output_dir", "o", flag])
    assert seen["c"].font_hint is False and seen["c"].negative_prompt == gen.EVAL_NEGATIVE_PROMPT
