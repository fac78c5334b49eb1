"""The demo model as package data: what ships (size, format, card) and how ``testing.demo_pipeline`` loads it."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import pytest
import torch

from anytext2_diffusers import testing

MAX_BYTES = 20 * 1000 * 1000  # issue #20: <= 20 MB in all
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".msgpack", ".h5", ".onnx")


def _files(folder):
    return [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files if "__pycache__" not in root]


def test_shipped_folder_is_small_fp16_safetensors_with_a_card_and_no_ocr():
    from safetensors import safe_open

    folder = testing.demo_model_dir()
    assert os.path.isfile(os.path.join(folder, "model_index.json")), f"{folder}: no model_index.json"
    files = _files(folder)
    total = sum(os.path.getsize(f) for f in files)
    assert total <= MAX_BYTES, f"{folder}: {total} bytes > {MAX_BYTES}"
    assert not os.path.exists(os.path.join(folder, "ocr")), f"{folder}/ocr: the recognizer is converted at load time"
    assert os.path.isfile(os.path.join(folder, "README.md")), f"{folder}: no model card README.md"
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
    assert weights and all(f.endswith(".safetensors") for f in weights), weights
    for path in weights:
        with safe_open(path, "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, f"{path}: {dtypes}"
    for name in ("unet", "vae", "controlnet", "attnx", "text_embedding", "text_encoder"):
        assert any(f.startswith(os.path.join(folder, name, "")) for f in weights), f"{folder}/{name}: no weights"


def test_shipped_configs_and_card_carry_no_machine_paths():
    folder = testing.demo_model_dir()
    for path in _files(folder):
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            assert not (isinstance(config, dict) and "_name_or_path" in config), f"{path}: _name_or_path"
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        absolute = re.findall(r'"(/[^"]+)"', f.read())  # JSON strings of the recipe that are absolute paths
    assert not absolute, f"{folder}/README.md: absolute paths of the machine that made it: {absolute[:3]}"


@pytest.fixture(scope="module")
def demo():
    return testing.demo_pipeline()


def test_demo_pipeline_is_float32_eval_with_rapidocrs_recognizer(demo):
    from anytext2_diffusers.pipelines import AnyText2Pipeline

    assert isinstance(demo, AnyText2Pipeline) and demo.attnx.is_attached
    assert type(demo.scheduler).__name__ == "DDIMScheduler"
    for name in ("unet", "controlnet", "attnx", "text_embedding", "vae", "text_encoder", "ocr"):
        model = getattr(demo, name)
        assert model.dtype == torch.float32 and not model.training, name
    reference = testing.rapidocr_recognizer().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in demo.ocr.state_dict().items())
    assert demo._progress_bar_config.get("disable") is True


def test_rapidocr_recognizer_is_converted_once_and_copied():
    a, b = testing.rapidocr_recognizer(), testing.rapidocr_recognizer()
    assert a is not b and next(a.parameters()).data_ptr() != next(b.parameters()).data_ptr()
    assert testing._converted_rapidocr_recognizer.cache_info().misses <= 1


def test_demo_pipeline_names_the_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(testing, "demo_model_dir", lambda: str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere.*model_index.json"):
        testing.demo_pipeline()


def test_demo_pipeline_names_missing_or_unfetched_weights(tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "demo_model"
    shutil.copytree(testing.demo_model_dir(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    monkeypatch.setattr(testing, "demo_model_dir", lambda: str(folder))
    with pytest.raises(FileNotFoundError, match=r"demo_model lacks its weights: unet/diffusion_pytorch_model"):
        testing.demo_pipeline()
    for rel in testing.DEMO_WEIGHT_FILES.values():
        (folder / rel).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(FileNotFoundError, match=r"unet/diffusion_pytorch_model.safetensors is a Git LFS pointer"):
        testing.demo_pipeline()


def test_demo_pipeline_names_the_rapidocr_install_command(monkeypatch):
    import importlib.util

    from anytext2_diffusers.models.ocr import rapidocr_files

    real = importlib.util.find_spec
    hide = rapidocr_files.RAPIDOCR_PACKAGE
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hide else real(name, *a))
    monkeypatch.setattr(testing, "_converted_rapidocr_recognizer", testing._converted_rapidocr_recognizer.__wrapped__)
    with pytest.raises(Exception, match=r"pip install --no-deps rapidocr-onnxruntime==1\.2\.3"):
        testing.demo_pipeline()


def test_export_drops_source_paths_and_the_card_names_no_work_folder(tmp_path):
    from anytext2_diffusers import demo_model as dm

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_name_or_path": "/some/where/unet", "a": 1}))
    (tmp_path / "tokenizer.json").write_text(json.dumps([1, 2]))
    assert dm.drop_source_paths(str(tmp_path)) == [os.path.join("unet", "config.json")]
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == {"a": 1}
    assert dm.drop_source_paths(str(tmp_path)) == []
    work = tmp_path / "work"
    work.mkdir()
    earlier = tmp_path / "earlier-work"  # a stage run in another work folder and copied in
    recipe = [
        dict(stage="data", train=str(work / "data" / "train.json"), out=testing.demo_model_dir()),
        dict(stage="vae", init_from=str(earlier / "vae" / "vae"), steps=3),
        dict(stage="focus", command=f"anytext2-train --validation_data {earlier}/data/held.json --seed 0", steps=9),
    ]
    (work / "recipe.json").write_text(json.dumps(recipe))
    card = dm.model_card(str(work))
    assert str(tmp_path) not in card and "<work_dir>/data/train.json" in card and "<package>/assets/demo_model" in card
    assert '"<work_dir>/vae/vae"' in card and "--validation_data <work_dir>/data/held.json --seed" in card
    # how to make it again (a card without the ocr stages says to skip them: the script's defaults may run them)
    assert "make_demo_model.py --work_dir demo-train --focus_steps 9 --ocr_steps 0 --ocr_restarts 0\n" in card
    # a run fine-tuned from the exported folder (--demo) takes the card's licence: the code's, not SD1.5's
    from anytext2_diffusers.training.hub import CODE_LICENSE, card_license

    (tmp_path / "README.md").write_text(card, encoding="utf-8")
    config = SimpleNamespace(model_card_license=None, tiny_model=False, pretrained_model_name_or_path=str(tmp_path))
    assert card_license(config) == CODE_LICENSE


def test_the_loop_fine_tunes_the_shipped_folder_with_rapidocrs_recognizer(tmp_path, caplog, one_thread):
    """The folder has no ``ocr/``: the loop's component loading converts rapidocr's (and says so); the fp16
    weights on disk train as float32; the output folder is complete (recognizer included)."""
    import logging

    from _training_helpers import reset_accelerate
    from safetensors.torch import load_file

    from anytext2_diffusers.data import make_demo_data
    from anytext2_diffusers.training import main as train_main

    data = make_demo_data(str(tmp_path / "data"), n=1, seed=0, resolution=128, lines_per_image=(1, 2))
    out = tmp_path / "out"
    reset_accelerate()
    with caplog.at_level(logging.INFO, logger="anytext2_diffusers.training.components"):
        code = train_main(["--pretrained_model_name_or_path", testing.demo_model_dir(), "--train_data", data,
                           "--output_dir", str(out), "--resolution", "128", "--train_batch_size", "1",
                           "--max_train_steps", "1", "--checkpointing_epochs", "0", "--report_to", "none",
                           "--cache_dir", str(tmp_path / "hf")])  # fmt: skip
    assert code == 0
    assert "has no ocr component: using the PP-OCRv3 recognizer of rapidocr-onnxruntime" in caplog.text
    saved = load_file(str(out / "ocr" / "diffusion_pytorch_model.safetensors"))
    reference = testing.rapidocr_recognizer().state_dict()
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], reference[k]) for k in saved)
    trained = load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))
    shipped = load_file(os.path.join(testing.demo_model_dir(), "controlnet", "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert any(not torch.equal(trained[k].half(), shipped[k]) for k in shipped)  # one step moved WriteNet


def test_ocr_model_name_or_path_wins_over_the_pipelines_and_rapidocrs(tmp_path):
    from anytext2_diffusers.training.components import _pipeline_ocr
    from anytext2_diffusers.training.config import TrainingConfig

    own = testing.rapidocr_recognizer()
    with torch.no_grad():
        next(own.parameters()).add_(1.0)
    own.save_pretrained(str(tmp_path / "own_ocr"))
    chosen = _pipeline_ocr(testing.demo_model_dir(), TrainingConfig(ocr_model_name_or_path=str(tmp_path / "own_ocr")))
    assert torch.equal(next(chosen.parameters()), next(own.parameters()))
    default = _pipeline_ocr(testing.demo_model_dir(), TrainingConfig())
    assert torch.equal(next(default.parameters()), next(testing.rapidocr_recognizer().parameters()))


def test_demo_synthesises_the_demo_models_kind_of_data(tmp_path):
    """--demo's data: the recipe's generator (training_pools words, up to 3 lines, 128 px images); its
    validation images hold held-out words only."""
    from PIL import Image

    from anytext2_diffusers.data.demo_words import HELDOUT_WORDS, training_pools
    from anytext2_diffusers.training.config import parse_args
    from anytext2_diffusers.training.loop import _prepare_demo

    config = parse_args(["--demo", "--output_dir", str(tmp_path / "demo"), "--demo_samples", "4"])
    from anytext2_diffusers.demo_model import EVAL_GUIDANCE

    assert config.validation_guidance_scale == EVAL_GUIDANCE  # the grid samples as the recipe's evaluation does
    _prepare_demo(config, SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None))
    latin, chinese, _ = training_pools(config.seed)
    pools = set(latin) | set(chinese)
    for path, allowed, n in ((config.train_data[0], pools, 4), (config.validation_data[0], set(HELDOUT_WORDS), 2)):
        with open(path, encoding="utf-8") as f:
            records = json.load(f)["data_list"]
        assert len(records) == n
        root = os.path.join(os.path.dirname(path), "imgs")
        assert any(record["annotations"] for record in records)
        for record in records:
            with Image.open(os.path.join(root, record["img_name"])) as im:
                assert im.size == (128, 128)
            texts = [a["text"] for a in record["annotations"]]
            assert len(texts) <= 3 and set(texts) <= allowed, (path, texts)  # 1-3 drawn; one may not fit
