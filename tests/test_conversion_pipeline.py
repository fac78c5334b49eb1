"""Whole-folder conversions through ``examples/convert_checkpoint.py``: original <-> pipeline folder, SD1.5 ->
fresh AnyText2, on the tiny stack (and the parity pack's reference checkpoint when available)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anytext2_diffusers import AnyText2Pipeline
from anytext2_diffusers.testing import quick_generate, tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("unet", "vae", "text_encoder", "controlnet", "attnx", "text_embedding", "ocr")


def run_convert(*args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "convert_checkpoint.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def same_weights(a, b):
    for name in COMPONENTS:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"


@pytest.fixture(scope="module")
def tiny_yaml():
    """The shipped tiny model yaml; it is the SD1.5 yaml shrunk to the tiny components' sizes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_conversion import tiny_original_config

    from anytext2_diffusers.configs import config_path

    path = config_path("anytext2_tiny.yaml")
    assert yaml.safe_load(open(path, encoding="utf-8")) == tiny_original_config()
    return path


def test_to_original_of_a_tiny_pipeline_asks_for_its_yaml(tmp_path):
    from anytext2_diffusers.conversion.pipeline_io import convert_pipeline_to_original

    tiny_pipeline(0).save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not an SD1.5-sized model .*--original_config tiny"):
        convert_pipeline_to_original(tmp_path / "pipe", tmp_path / "o.safetensors")
    assert convert_pipeline_to_original(tmp_path / "pipe", tmp_path / "o.safetensors", "tiny") > 0


def test_pipeline_to_original_and_back_is_identical(tmp_path, tiny_yaml, monkeypatch):
    pipe = tiny_pipeline(0)
    pipe.save_pretrained(tmp_path / "pipe")
    run_convert(
        "--to_original",
        tmp_path / "orig.safetensors",
        "--pipeline_dir",
        tmp_path / "pipe",
        "--original_config",
        tiny_yaml,
    )
    report = run_convert(
        "--from_original",
        tmp_path / "orig.safetensors",
        "--output_dir",
        tmp_path / "back",
        "--original_config",
        tiny_yaml,
        "--clip_model_name_or_path",
        tmp_path / "pipe",
    )
    assert "unused keys: 0; missing keys: 0" in report
    # written one component at a time: the index is the one save_pretrained writes
    index = json.loads((tmp_path / "back" / "model_index.json").read_text())
    expected = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index == expected
    back = AnyText2Pipeline.from_pretrained(tmp_path / "back")
    same_weights(pipe, back)
    # Compare loaded with loaded: a freshly constructed CLIP may use another attention implementation.
    np.testing.assert_array_equal(
        quick_generate(AnyText2Pipeline.from_pretrained(tmp_path / "pipe"), size=128, output_type="np"),
        quick_generate(back, size=128, output_type="np"),
    )
    # the converted folder also loads through diffusers' generic entry point
    from _generic_loader import assert_generic_loader_matches

    assert_generic_loader_matches(tmp_path / "back", tmp_path / "modules", monkeypatch)


def test_parity_checkpoint_converts_with_every_key_used(parity_dir, tmp_path):
    from safetensors.torch import load_file

    report = run_convert(
        "--from_original",
        parity_dir / "anytext2_tiny_state_dict.safetensors",
        "--output_dir",
        tmp_path / "pipe",
        "--original_config",
        parity_dir / "tiny_anytext2.yaml",
        "--clip_model_name_or_path",
        parity_dir / "tiny_clip",
    )
    assert "unused keys: 0; missing keys: 0" in report
    pipe = AnyText2Pipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.attnx.is_attached
    run_convert(
        "--to_original",
        tmp_path / "again.safetensors",
        "--pipeline_dir",
        tmp_path / "pipe",
        "--original_config",
        parity_dir / "tiny_anytext2.yaml",
    )
    original = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(parity_dir / "anytext2_tiny_state_dict.safetensors").items()
    }
    again = load_file(tmp_path / "again.safetensors")
    assert again.keys() == original.keys()
    for k in original:
        assert torch.equal(again[k].to(original[k].dtype), original[k]), k


def fresh_from_sd15(tmp_path, tiny_yaml):
    from anytext2_diffusers.testing import tiny_components, tiny_recognizer

    parts = tiny_components(0)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        parts[name].save_pretrained(tmp_path / "sd15" / name)
    tiny_recognizer(1).save_pretrained(tmp_path / "ocr")
    run_convert(
        "--from_sd15",
        tmp_path / "sd15",
        "--output_dir",
        tmp_path / "fresh",
        "--ocr_model",
        tmp_path / "ocr",
        "--original_config",
        tiny_yaml,
    )
    return parts, tmp_path / "fresh"


def test_from_sd15_folder_makes_a_loadable_pipeline_that_trains(tmp_path, tiny_yaml):
    from _training_helpers import make_data, tiny_config

    from anytext2_diffusers.training import train

    parts, fresh = fresh_from_sd15(tmp_path, tiny_yaml)
    pipe = AnyText2Pipeline.from_pretrained(fresh)
    assert torch.equal(pipe.controlnet.conv_in.weight, parts["unet"].conv_in.weight)
    assert pipe.controlnet.fuse_block.weight.abs().sum() == 0
    ocr = pipe.ocr.state_dict()
    font = pipe.text_embedding.font_predictor.state_dict()
    assert all(torch.equal(ocr[k], font[k]) for k in ocr)
    assert quick_generate(pipe, size=128, output_type="np").shape == (1, 128, 128, 3)

    data = make_data(str(tmp_path / "data"), n=2, seed=0)
    config = tiny_config(
        str(tmp_path / "run"),
        data,
        str(tmp_path / "ocr"),
        tiny_model=False,
        pretrained_model_name_or_path=str(fresh),
        max_train_steps=1,
        learning_rate=1e-3,
    )
    result = train(config)
    assert result.global_step == 1
    trained = AnyText2Pipeline.from_pretrained(tmp_path / "run")
    # One step moves the zero convs (the fuse conv behind them only gets gradients once they are non-zero).
    assert trained.controlnet.controlnet_mid_block.weight.abs().sum() > 0
