"""The Tesseract second reader: what it hands the ``tesseract`` command and what it makes of the reply,
through a stand-in command (CI machines have no Tesseract; the real readings are in docs/demo_model.md)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from eval_helpers import make_benchmark
from PIL import Image

from anytext2_diffusers.evaluation.tesseract import TesseractReader


def stand_in(tmp_path, reply: str, code: int = 0):
    """A ``tesseract`` that records its arguments and input image per call, prints ``reply`` and exits ``code``."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "tesseract"
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{calls}" | grep -c args)\n'
        f'echo "$@ OMP_THREAD_LIMIT=$OMP_THREAD_LIMIT" > "{calls}/$n.args"\n'
        f'cat > "{calls}/$n.png"\n'
        f"printf '{reply}'\n"
        'echo "bad input" >&2\n'
        f"exit {code}\n"
    )
    script.chmod(0o755)
    return folder, calls


def test_each_crop_is_scaled_up_and_read_as_one_line(tmp_path):
    folder, calls = stand_in(tmp_path, " Wo rd\\n\\n")
    reader = TesseractReader(command=str(folder / "tesseract"))
    crops = [np.full((48, 112, 3), 200, np.uint8), np.zeros((30, 50, 3), np.uint8)]
    assert reader(crops) == ["Word", "Word"]  # the spaces and newlines of the reply dropped
    for n, (h, w) in enumerate(((48, 112), (30, 50))):
        assert (calls / f"{n}.args").read_text().split() == [
            "stdin", "stdout", "--psm", "7", "-l", "eng", "OMP_THREAD_LIMIT=1",
        ]  # fmt: skip
        image = Image.open(io.BytesIO((calls / f"{n}.png").read_bytes()))
        assert image.size == (4 * w, 4 * h) and image.mode == "RGB"
    assert TesseractReader(command=str(folder / "tesseract"), lang="chi_sim", scale=1).lang == "chi_sim"


def test_a_failing_or_missing_command_says_so(tmp_path):
    folder, _ = stand_in(tmp_path, "", code=1)
    with pytest.raises(RuntimeError, match="exited with 1: bad input"):
        TesseractReader(command=str(folder / "tesseract"))([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(FileNotFoundError, match="apt-get install tesseract-ocr"):
        TesseractReader(command=str(tmp_path / "no-such-tesseract"))
    with pytest.raises(ValueError, match="scale must be >= 1"):
        TesseractReader(command=str(folder / "tesseract"), scale=0)


def test_the_cli_takes_it_as_its_recognizer(tmp_path, monkeypatch):
    """``anytext2-eval ocr --recognizer anytext2_diffusers.evaluation.tesseract:TesseractReader`` finds
    ``tesseract`` on PATH and scores every line with its readings."""
    from anytext2_diffusers.evaluation.cli import main

    bench, images = make_benchmark(tmp_path / "bench", num_samples=1)
    folder, calls = stand_in(tmp_path, "OPEN")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    report = tmp_path / "report.json"
    spec = "anytext2_diffusers.evaluation.tesseract:TesseractReader"
    args = ["ocr", "--images", str(images), "--benchmark", str(bench), "--num_samples", "1", "--recognizer", spec]
    assert main([*args, "--report", str(report)]) == 0
    result = json.loads(report.read_text(encoding="utf-8"))
    assert result["lines"] == 16 == len(list(calls.glob("*.png")))  # one call per line
    assert result["sen_acc"] == pytest.approx(1 / 16) and result["recognizer"] == spec  # "OPEN": one line's text
    assert [d["pred"] for d in result["details"]] == ["OPEN"] * 16
