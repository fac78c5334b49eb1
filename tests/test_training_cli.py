"""The training command's first seconds: configuration errors are one ``error:`` line before anything is
imported or written; ``--help`` is grouped and light; abbreviations are refused; the end hint is true."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_anytext2.py")

# Runs main() and reports whether torch (seconds to import) was needed to answer.
PROBE = """
import sys
from anytext2_diffusers.training import main
try:
    sys.exit(main(sys.argv[1:]))
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


def run(args, cwd, env=None, probe=True):
    command = [sys.executable, "-c", PROBE, *args] if probe else [sys.executable, SCRIPT, *args]
    environ = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), **(env or {})}
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def data(tmp_path):
    """An existing (empty) annotation file outside the working folder."""
    path = tmp_path / "data" / "data_v1.2b.json"
    path.parent.mkdir()
    path.write_text('{"data_root": "imgs", "data_list": []}')
    return str(path)


CASES = {
    "no train data": ([], "--train_data is required"),
    "missing JSON": (["--tiny_model", "--train_data", "nope/data_v1.2b.json"], "--train_data nope/data_v1.2b.json"),
    "missing resume folder": (["--demo", "--resume_from_checkpoint", "checkpoint-9"], "--resume_from_checkpoint"),
    "missing config file": (["--config", "run.yaml"], "--config run.yaml: file not found"),
    "abbreviated option": (["--demo", "--max_train_step", "2"], "unrecognized arguments: --max_train_step"),
    "impossible precision": (["--demo", "--mixed_precision", "fp8"], "--mixed_precision"),
    "bad resolution": (["--demo", "--resolution", "100"], "multiple of 8"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_configuration_errors_are_one_line_and_write_nothing(tmp_path, name):
    args, expected = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    result = run(args, work)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anytext2-train: error: "), result.stderr
    assert expected in lines[0]
    assert "torch not imported" in result.stdout  # answered before the heavy imports
    assert os.listdir(work) == []


def test_fp16_under_deepspeed_on_cpu_is_refused_at_start(tmp_path, data):
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "CUDA_VISIBLE_DEVICES": ""}
    result = run(["--tiny_model", "--train_data", data, "--mixed_precision", "fp16"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "anytext2-train: error: --mixed_precision fp16 with DeepSpeed needs a GPU (its fp16 loss scaling does not "
        "run on CPUs): use bf16 or no"
    )
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_every_error_is_reported_at_once(tmp_path):
    result = run(["--train_data", "a.json", "--validation_data", "b.json"], tmp_path)
    line = result.stderr.strip()
    for part in ("--train_data a.json", "--validation_data b.json", "--pretrained_model_name_or_path is required"):
        assert part in line


def test_help_is_grouped_by_section_and_light(tmp_path):
    result = run(["--help"], tmp_path, probe=False)
    assert result.returncode == 0
    text = result.stdout
    for section in ("model:", "data:", "LoRA (docs/lora.md):", "optimisation:", "checkpoints:", "hub:", "demo:"):
        assert f"\n{section}\n" in text, section
    assert text.count("(default:") > 60
    assert "(default: None)" not in text  # one default per option, written "none"
    assert "accelerate's config). (default" not in text  # a help text that states its default keeps only that
    probe = run(["--help"], tmp_path)
    assert "torch not imported" in probe.stdout


def test_next_steps_list_only_what_exists(tmp_path):
    from anytext2_diffusers.training import _next_steps

    result = SimpleNamespace(output_dir=str(tmp_path), global_step=2, last_logs={"t/loss": 0.5})
    assert "validation" not in _next_steps(result, 1.0)
    (tmp_path / "validation").mkdir()
    assert os.path.join(str(tmp_path), "validation") in _next_steps(result, 1.0)


def test_cpu_threads_follow_the_idle_cores():
    from anytext2_diffusers.training.threads import pick_threads

    assert pick_threads(cores=2, load=22.0, processes=1) == 1  # the busy 2-core box of the measurement
    assert pick_threads(cores=2, load=0.1, processes=1) == 2
    assert pick_threads(cores=16, load=4.0, processes=2) == 6
    assert pick_threads(cores=2, load=0.0, processes=4) == 1
