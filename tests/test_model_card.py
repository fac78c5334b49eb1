"""The output folder's model card: Hub metadata that the Hub accepts, the right licence and base model,
a usage snippet that loads what the run wrote (LoRA included), the last validation grid, no local paths.

Offline: ``ModelCard.validate`` asks the Hub's API, so the checks the Hub makes on these fields are made
here (repo-id syntax of ``base_model``, the metadata keys, a parseable YAML header)."""

import os

import numpy as np
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from anytext2_diffusers.training import hub
from anytext2_diffusers.training.config import TrainingConfig


def make_config(tmp_path, **kw):
    data = tmp_path / "data" / "ocr_data" / "part1" / "data_v1.2b.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text('{"data_root": "imgs", "data_list": []}')
    values = dict(output_dir=str(tmp_path / "out" / "anytext2-run"), train_data=[str(data)], resolution=128)
    values.update(kw)
    os.makedirs(values["output_dir"], exist_ok=True)
    return TrainingConfig(**values)


def write_and_load(config, metrics=None):
    path = hub.write_model_card(config, 7, metrics or {})
    assert path == os.path.join(config.output_dir, "README.md")
    text = open(path, encoding="utf-8").read()
    return ModelCard.load(path), text


def check_hub_metadata(card):
    """What the Hub's metadata validation rejects in these fields: base_model that is not a repo id."""
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "text-to-image"
    assert "anytext2" in data["tags"] and "text-to-image" in data["tags"]
    if "base_model" in data:
        validate_repo_id(data["base_model"])  # raises HFValidationError on a local path
    return data


def test_local_base_model_is_named_in_the_text_only(tmp_path):
    base = tmp_path / "models" / "stable-diffusion-v1-5"
    base.mkdir(parents=True)
    card, text = write_and_load(make_config(tmp_path, pretrained_model_name_or_path=str(base)))
    data = check_hub_metadata(card)
    assert "base_model" not in data
    assert data["license"] == "creativeml-openrail-m"  # SD1.5-derived weights keep SD1.5's licence
    assert "`models/stable-diffusion-v1-5` (a local copy)" in text
    # #17 bug 8: nothing of the machine's absolute paths goes to the Hub
    assert str(tmp_path) not in text and "data_v1.2b.json" in text and "part1/data_v1.2b.json" in text


def test_readme_training_command_relative_base(tmp_path, monkeypatch):
    """The README's command: ``--pretrained_model_name_or_path ./stable-diffusion-v1-5``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stable-diffusion-v1-5").mkdir()
    card, text = write_and_load(make_config(tmp_path, pretrained_model_name_or_path="./stable-diffusion-v1-5"))
    assert "base_model" not in check_hub_metadata(card)
    assert "`stable-diffusion-v1-5` (a local copy)" in text


def test_hub_base_model_goes_to_the_metadata(tmp_path):
    config = make_config(tmp_path, pretrained_model_name_or_path="stable-diffusion-v1-5/stable-diffusion-v1-5")
    card, text = write_and_load(config)
    data = check_hub_metadata(card)
    assert data["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data["license"] == "creativeml-openrail-m"
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in text


def test_licence_follows_the_base_card_and_the_option(tmp_path):
    base = tmp_path / "anytext2-base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: openrail\n---\n# base\n")
    card, _ = write_and_load(make_config(tmp_path, pretrained_model_name_or_path=str(base)))
    assert card.data.license == "openrail"
    config = make_config(tmp_path, pretrained_model_name_or_path=str(base), model_card_license="other")
    assert write_and_load(config)[0].data.license == "other"
    tiny, _ = write_and_load(make_config(tmp_path, tiny_model=True))  # random weights: the code's licence
    assert tiny.data.license == "apache-2.0" and "base_model" not in tiny.data.to_dict()


def test_lora_run_card_and_hint_load_the_adapters(tmp_path):
    from anytext2_diffusers.training import TrainResult, _next_steps

    config = make_config(tmp_path, tiny_model=True, lora_rank=4, lora_components=["unet", "attnx"])
    card, text = write_and_load(config)
    assert "lora" in card.data.tags and "LoRA (rank 4) on unet, attnx" in text
    assert "load_lora_adapters(pipe, folder)" in text and "| `lora_rank` | `4` |" in text
    assert "`pytorch_lora_weights.safetensors`" in text and "`attnx_lora/`" in text and "controlnet_lora" not in text
    hint = _next_steps(TrainResult(global_step=7, output_dir=config.output_dir), 1.0, config)
    assert "load_lora_adapters(pipe, " in hint
    merged = make_config(tmp_path, tiny_model=True, lora_rank=4, merge_lora_at_end=True)
    _, text = write_and_load(merged)
    assert "load_lora_adapters" not in text and "merged into the weights" in text
    hint = _next_steps(TrainResult(global_step=7, output_dir=merged.output_dir), 1.0, merged)
    assert "load_lora_adapters" not in hint and "AnyText2Pipeline.from_pretrained(" in hint


def test_last_validation_grid_and_metrics_only_when_validation_ran(tmp_path):
    config = make_config(tmp_path, tiny_model=True)
    _, text = write_and_load(config)
    assert "Validation images" not in text and "## Validation (last" not in text
    folder = os.path.join(config.output_dir, "validation")
    os.makedirs(folder)
    for step in (2, 10):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(folder, f"step-{step:06d}.png"))
    _, text = write_and_load(config, {"v/loss": 0.25})
    assert "![step-000010.png](validation/step-000010.png)" in text and "step-000002" not in text
    assert "| `v/loss` | 0.25000 |" in text


def test_pushed_run_snippet_downloads_the_repo(tmp_path):
    config = make_config(tmp_path, tiny_model=True, push_to_hub=True, hub_model_id="me/anytext2-tiny")
    _, text = write_and_load(config)
    assert 'snapshot_download("me/anytext2-tiny")' in text


@pytest.mark.parametrize("base", ["/abs/sd15", "../sd15", "model.safetensors", "a/b/c", "user/repo with space"])
def test_paths_are_not_hub_ids(base):
    assert hub.hub_id(base) is None
    assert not hub.public_path(base).startswith("/") and ".." not in hub.public_path(base)


def test_usage_snippet_runs_on_a_saved_pipeline(tmp_path, monkeypatch):
    """The card's code, as a user copies it, generates from a saved (tiny) pipeline folder."""
    from anytext2_diffusers.testing import tiny_pipeline

    monkeypatch.chdir(tmp_path)
    config = make_config(tmp_path, tiny_model=True, output_dir="anytext2-run")
    tiny_pipeline(seed=0).save_pretrained("anytext2-run")
    code = hub.usage_snippet(config).replace("num_inference_steps=20", "num_inference_steps=2")
    exec(compile(code, "model-card-snippet", "exec"), {})
    assert Image.open(tmp_path / "anytext2.png").size == (128, 128)
