"""docs/own_data.md, command by command, on the tiny stack: annotate -> preview -> export / push the
dataset -> fine-tune (fresh, and from a converted original checkpoint) -> evaluate on the held-out
split -> push the model. The Hub is mocked; photos are demo images (real PP-OCRv3 annotation)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from _training_helpers import reset_accelerate

from anytext2_diffusers.data import make_demo_data

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A user's folders: 4 training photos and 2 held-out ones (512 px: anytext2-eval's frame)."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("own")
    for split, n, seed in (("train", 4, 11), ("heldout", 2, 12)):
        src = make_demo_data(str(root / f"synth_{split}"), n=n, seed=seed, lines_per_image=(1, 2))
        shutil.copytree(os.path.join(os.path.dirname(src), "imgs"), root / "photos" / split)
    (root / "photos" / "train" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i:06d}.jpg", "caption": f"a sign, photo {i}"}) + "\n" for i in range(4))
    )
    return root


@pytest.fixture(scope="module")
def annotated(photos):
    """Step 1: anytext2-annotate on each folder."""
    from anytext2_diffusers.annotation.cli import main

    out = {}
    for split in ("train", "heldout"):
        path = photos / "data" / f"{split}.json"
        os.makedirs(path.parent, exist_ok=True)
        assert main(["--images", str(photos / "photos" / split), "--output", str(path)]) == 0
        out[split] = str(path)
    return out


def test_annotate_preview_and_export(annotated, photos, tmp_path, capsys):
    from datasets import Dataset, load_dataset

    from anytext2_diffusers.data.cli import export_main, preview_main

    train = json.loads(Path(annotated["train"]).read_text(encoding="utf-8"))
    assert [r["caption"] for r in train["data_list"]] == [f"a sign, photo {i}" for i in range(4)]
    assert sum(len(r["annotations"]) for r in train["data_list"]) >= 4
    # Step 2: preview what training will see.
    assert preview_main(["--train_data", annotated["train"], "--output_dir", str(tmp_path / "preview"),
                         "--num_samples", "2", "--resolution", "128"]) == 0  # fmt: skip
    assert sorted(os.listdir(tmp_path / "preview")) == ["sample_00000.png", "sample_00001.png"]
    # Step 3: Parquet shards with the images inside; read back by `datasets`' Parquet loader.
    assert export_main(["--train_data", annotated["train"], "--output_dir", str(tmp_path / "parquet")]) == 0
    ds = load_dataset("parquet", data_dir=str(tmp_path / "parquet"), cache_dir=str(tmp_path / "hf"))["train"]
    assert len(ds) == 4 and ds[0]["image"] is not None and ds[0]["annotations"]
    # ... and pushed as a Hub dataset (datasets' push_to_hub writes the card with its `configs:`).
    import huggingface_hub

    pushed, cards = [], []
    with (
        mock.patch.object(Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, kw, len(self)))),
        mock.patch.object(huggingface_hub, "create_repo", lambda repo, **kw: cards.append(("create", repo, kw))),
        mock.patch.object(
            huggingface_hub.DatasetCard, "push_to_hub", lambda self, repo, **kw: cards.append(("card", repo, kw))
        ),
    ):
        assert export_main(["--train_data", annotated["train"], "--push_to_hub", "--hub_model_id", "me/my-signs"]) == 0
    assert [(repo, kw["split"], kw["private"], n) for repo, kw, n in pushed] == [("me/my-signs", "train", True, 4)]
    assert [(what, repo) for what, repo, _ in cards] == [("create", "me/my-signs"), ("card", "me/my-signs")]


def _convert(*args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "convert_checkpoint.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fine_tune_from_original_evaluate_and_push(annotated, tmp_path, capsys):
    from anytext2_diffusers.evaluation.cli import main as eval_main
    from anytext2_diffusers.testing import tiny_pipeline
    from anytext2_diffusers.training import main as train_main

    sys.path.insert(0, str(ROOT / "tests"))
    from test_conversion import tiny_original_config

    # Step 4: an original AnyText2 checkpoint (the tiny stack's, written in the original layout)...
    tiny_yaml = tmp_path / "tiny.yaml"
    tiny_yaml.write_text(yaml.safe_dump(tiny_original_config()))
    tiny_pipeline(0).save_pretrained(tmp_path / "tiny")
    _convert("--to_original", tmp_path / "anytext2.safetensors", "--pipeline_dir", tmp_path / "tiny",
             "--original_config", tiny_yaml)  # fmt: skip
    # ... converted with --from_original, then fine-tuned on the annotated JSON and pushed (mocked Hub).
    _convert("--from_original", tmp_path / "anytext2.safetensors", "--output_dir", tmp_path / "converted",
             "--original_config", tiny_yaml, "--clip_model_name_or_path", tmp_path / "tiny")  # fmt: skip
    out = tmp_path / "my-anytext2"
    uploads = []
    with (
        mock.patch("huggingface_hub.create_repo", lambda repo_id, **kw: mock.Mock(repo_id=repo_id)),
        mock.patch("huggingface_hub.upload_folder", lambda **kw: uploads.append(kw)),
    ):
        code = train_main(["--pretrained_model_name_or_path", str(tmp_path / "converted"),
                           "--train_data", annotated["train"], "--output_dir", str(out),
                           "--resolution", "64", "--max_lines", "2", "--train_batch_size", "2",
                           "--max_train_steps", "2", "--checkpointing_epochs", "0", "--validation_steps", "100",
                           "--num_validation_images", "1", "--max_validation_batches", "1",
                           "--validation_num_inference_steps", "2", "--report_to", "none",
                           "--mixed_precision", "no", "--cache_dir", str(tmp_path / "hf"),
                           "--push_to_hub", "--hub_model_id", "me/anytext2-signs"])  # fmt: skip
    assert code == 0
    assert [(u["repo_id"], u["folder_path"]) for u in uploads] == [("me/anytext2-signs", str(out))]
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    # Step 5: generate for the held-out split and score its lines.
    capsys.readouterr()
    assert eval_main(["generate", "--pretrained_model_name_or_path", str(out), "--benchmark", annotated["heldout"],
                      "--output_dir", str(tmp_path / "gen"), "--num_samples", "1", "--resolution", "64",
                      "--num_inference_steps", "2", "--mixed_precision", "no"]) == 0  # fmt: skip
    assert last_json(capsys)["generated"] == 2
    assert eval_main(["ocr", "--images", str(tmp_path / "gen"), "--benchmark", annotated["heldout"],
                      "--num_samples", "1"]) == 0  # fmt: skip
    result = last_json(capsys)
    held = json.loads(Path(annotated["heldout"]).read_text(encoding="utf-8"))["data_list"]
    assert result["lines"] == sum(len(r["annotations"]) for r in held) and 0 <= result["sen_acc"] <= 1


def test_demo_trains_on_annotated_images(annotated, tmp_path):
    """Must-show 2: the demo (here on a fresh tiny SD1.5-shaped stack) on the annotated JSON instead of synthetic
    data."""
    from anytext2_diffusers.training import main as train_main

    out = tmp_path / "demo"
    code = train_main(["--demo", "--tiny_model", "--train_data", annotated["train"], "--output_dir", str(out),
                       "--max_train_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "2",
                       "--cache_dir", str(tmp_path / "hf")])  # fmt: skip
    assert code == 0
    config = yaml.safe_load((out / "training_config.yaml").read_text(encoding="utf-8"))
    assert config["train_data"] == [annotated["train"]] and config["tiny_model"] is True
    assert (out / "model_index.json").is_file() and (out / "controlnet" / "config.json").is_file()
