"""End-to-end training runs on the tiny stack (CPU): logs, output folder, overfitting, exact resume,
Hub upload (mocked), non-finite losses and SIGTERM."""

from __future__ import annotations

import glob
import importlib
import json
import os
import signal
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from _training_helpers import (
    Recorder,
    make_data,
    reset_accelerate,
    save_small_recognizer,
    tiny_config,
    trainable_weights,
)
from PIL import Image

from anytext2_diffusers.pipelines import AnyText2Pipeline
from anytext2_diffusers.training import TrainingCallback, TrainingDiverged, hub, parse_args, train
from anytext2_diffusers.training import checkpointing as ckpt

# One torch thread: on a shared 2-core box it is faster than two (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("training_assets")
    return dict(
        root=root,
        ocr=save_small_recognizer(str(root / "ocr")),
        train=make_data(str(root / "train"), n=4, seed=0),
        pair=make_data(str(root / "pair"), n=2, seed=1),
        val=make_data(str(root / "val"), n=2, seed=2),
        # missing/corrupt images, bad polygons, empty texts, unknown language, '*' in a caption ...
        faulty=make_data(str(root / "faulty"), n=2, seed=3, with_faults=True),
    )


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Each train() call builds its own Accelerator; drop accelerate's process-wide singletons between tests."""
    yield
    reset_accelerate()


def read_events(logdir: str) -> tuple[dict, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, set()
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        images.update(acc.Tags()["images"])
    return scalars, images


def load_output_folder(folder: str) -> dict:
    """Load every component the way DiffusionPipeline.from_pretrained does (model_index.json -> class)."""
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "AnyText2Pipeline"
    loaded = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        library, class_name = entry
        cls = getattr(importlib.import_module(library), class_name)
        loaded[name] = cls.from_pretrained(folder, subfolder=name)
    return loaded


# ------------------------------------------------------------------------------------------------
# 1 + 6: a few-step run with everything on; its folder is pushed to a mocked Hub
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def few_step_run(assets):
    out = str(assets["root"] / "run")
    config = tiny_config(
        out,
        assets["faulty"],
        assets["ocr"],
        validation_data=[assets["val"]],
        report_to="tensorboard",
        loss_alpha=0.003,
        loss_beta=0.003,
        max_train_steps=3,
        validation_steps=2,
        checkpointing_steps=2,
    )
    recorder = Recorder()
    result = train(config, recorder)
    reset_accelerate()
    return config, result, recorder


def test_few_step_run_logs_and_output_folder(few_step_run):
    config, result, recorder = few_step_run
    assert result.global_step == 3 and result.nonfinite_total == 0
    # the broken records were rendered as substitutes / neutralised lines, never fatal
    assert result.data_faults, "the faulty records should have been met"
    print("data faults met in the few-step run:", result.data_faults)
    for step, logs in recorder.logs.items():
        for key in ("t/sim", "t/ocr", "t/ctc", "t/loss", "grad_norm", "lr"):
            assert np.isfinite(logs[key]), (step, key, logs[key])
    scalars, images = read_events(os.path.join(config.output_dir, "logs"))
    for tag in (
        "t/sim",
        "t/ocr",
        "t/ctc",
        "t/loss",
        "lr",
        "grad_norm",
        "samples_per_sec",
        "data_wait_sec",
        "v/sim",
        "v/ocr",
        "v/ctc",
        "v/loss",
    ):
        assert tag in scalars, f"{tag} missing from the TensorBoard events ({sorted(scalars)})"
    assert [s for s, _ in sorted(scalars["t/sim"])] == [1, 2, 3]
    assert sorted({s for s, _ in scalars["v/sim"]}) == [2, 3]  # every validation_steps and at the end
    assert "v/images" in images
    grids = sorted(glob.glob(os.path.join(config.output_dir, "validation", "step-*.png")))
    grid = np.asarray(Image.open(grids[-1]))
    size = config.resolution
    header = max(16, size // 8)  # the column names (validation.header_row)
    assert grid.shape == (header + size * config.num_validation_images, size * 7, 3)
    assert grid[header:, 5 * size : 6 * size].any(), "the generated-sample column is empty (pipeline sampling failed?)"

    parts = load_output_folder(config.output_dir)
    assert set(parts) == {
        "vae",
        "text_encoder",
        "tokenizer",
        "unet",
        "controlnet",
        "attnx",
        "scheduler",
        "text_embedding",
        "ocr",
    }
    final = trainable_weights(config.output_dir)
    assert all(torch.isfinite(v).all() for v in final.values())
    pipe = AnyText2Pipeline.from_pretrained(config.output_dir)
    assert pipe.controlnet is not None and pipe.text_embedding is not None

    saved = parse_args(["--config", os.path.join(config.output_dir, "training_config.yaml")])
    assert saved.to_dict() == config.to_dict()


def test_output_folder_loads_through_diffusers_generic_entry_point(few_step_run, tmp_path, monkeypatch):
    from _generic_loader import assert_generic_loader_matches

    config, _, _ = few_step_run
    assert_generic_loader_matches(config.output_dir, tmp_path / "modules", monkeypatch)


def test_push_to_hub_uploads_everything_but_checkpoints(few_step_run):
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import filter_repo_objects

    config, result, _ = few_step_run
    assert ckpt.list_checkpoints(config.output_dir), "the run should have left a checkpoint to exclude"
    config = tiny_config(
        config.output_dir,
        config.train_data[0],
        config.ocr_model_name_or_path,
        validation_data=config.validation_data,
        push_to_hub=True,
        hub_model_id="me/anytext2-tiny",
        hub_token="hf_secret_token_value",
        hub_private=True,
    )
    card_path = hub.write_model_card(config, result.global_step, result.validation)
    created, uploads = [], []

    def fake_create_repo(repo_id, **kw):
        created.append((repo_id, kw))
        return mock.Mock(repo_id=repo_id)

    def fake_upload_folder(**kw):
        uploads.append(kw)

    with (
        mock.patch("huggingface_hub.create_repo", fake_create_repo),
        mock.patch("huggingface_hub.upload_folder", fake_upload_folder),
    ):
        assert hub.push_to_hub(config) == "me/anytext2-tiny"
    assert created == [("me/anytext2-tiny", dict(exist_ok=True, private=True, token="hf_secret_token_value"))]
    (upload,) = uploads
    assert upload["repo_id"] == "me/anytext2-tiny" and upload["folder_path"] == config.output_dir
    files = sorted(
        os.path.relpath(os.path.join(d, f), config.output_dir).replace(os.sep, "/")
        for d, _, fs in os.walk(config.output_dir)
        for f in fs
    )
    sent = list(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert not [f for f in sent if f.startswith("checkpoint-")]
    for required in (
        "model_index.json",
        "pipeline.py",  # diffusers' generic entry point (custom_pipeline="pipeline")
        "README.md",
        "training_config.yaml",
        "controlnet/config.json",
        "controlnet/diffusion_pytorch_model.safetensors",
        "attnx/config.json",
        "text_embedding/config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "ocr/config.json",
    ):
        assert required in sent, f"{required} not uploaded"
    assert any(f.startswith("logs/") for f in sent) and any(f.startswith("validation/") for f in sent)

    card = open(card_path, encoding="utf-8").read()
    assert ModelCard.load(card_path).data.license == "apache-2.0"  # tiny random weights: the code's licence
    # the data is named without the machine's absolute paths (#17 bug 8)
    assert "tiny random test components" in card and hub.public_path(config.train_data[0]) in card
    assert not [p for p in config.train_data if os.path.isabs(p) and p in card]
    assert "| `learning_rate` | `0.0001` |" in card and "| `loss_alpha` |" in card
    assert "`v/sim`" in card and "](validation/step-" in card
    for path in sent:
        full = os.path.join(config.output_dir, path)
        if path.endswith((".md", ".json", ".yaml", ".txt")):
            assert "hf_secret_token_value" not in open(full, encoding="utf-8", errors="ignore").read(), path


def test_script_entry_point(assets, capsys):
    """What examples/train_anytext2.py runs: argv -> config -> train -> exit code and the "open next" lines."""
    from anytext2_diffusers.training import main

    out = str(assets["root"] / "cli")
    argv = [
        "--tiny_model",
        "--train_data",
        assets["train"],
        "--ocr_model_name_or_path",
        assets["ocr"],
        "--output_dir",
        out,
        "--resolution",
        "64",
        "--max_lines",
        "2",
        "--train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--max_train_steps",
        "1",
        "--report_to",
        "none",
        "--checkpointing_epochs",
        "0",
        "--cache_dir",
        str(assets["root"] / "hf_cache"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Done in" in printed and "tensorboard --logdir" in printed and "from_pretrained" in printed
    assert os.path.isfile(os.path.join(out, "model_index.json"))
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "train_anytext2.py")
    run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--pretrained_model_name_or_path" in run.stdout and "--resume_from_checkpoint" in run.stdout


def test_parquet_export_trains(assets):
    from anytext2_diffusers.data import export_parquet, load_anyword

    folder = str(assets["root"] / "parquet")
    export_parquet(load_anyword([assets["train"]], cache_dir=str(assets["root"] / "hf_cache")), folder)
    out = str(assets["root"] / "from_parquet")
    result = train(tiny_config(out, folder, assets["ocr"], max_train_steps=1))
    assert result.global_step == 1 and not result.data_faults


def test_fine_tune_from_the_output_folder(few_step_run, assets):
    config, _, _ = few_step_run
    before = trainable_weights(config.output_dir)
    out = str(assets["root"] / "finetune")
    result = train(
        tiny_config(
            out,
            assets["train"],
            assets["ocr"],
            tiny_model=False,
            pretrained_model_name_or_path=config.output_dir,
            max_train_steps=1,
            learning_rate=1e-3,
        )
    )
    assert result.global_step == 1
    after = trainable_weights(out)
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from the loaded weights


# ------------------------------------------------------------------------------------------------
# 2: overfitting two samples
# ------------------------------------------------------------------------------------------------
def test_overfitting_two_samples_lowers_t_sim(assets):
    out = str(assets["root"] / "overfit")
    config = tiny_config(out, assets["pair"], assets["ocr"], max_train_steps=40, learning_rate=1e-3, sd_locked=False)
    recorder = Recorder()
    train(config, recorder)
    sim = np.array([recorder.logs[s]["t/sim"] for s in sorted(recorder.logs)])
    first, last = sim[:8].mean(), sim[-8:].mean()
    print(f"overfit t/sim: first 8 steps {first:.4f}, last 8 steps {last:.4f} ({100 * (1 - last / first):.0f}% lower)")
    assert last < 0.6 * first


# ------------------------------------------------------------------------------------------------
# 3: exact resume
# ------------------------------------------------------------------------------------------------
class Kill(TrainingCallback):
    """Dies (like a kill -9) in the middle of step ``at``, after the checkpoint of the previous step."""

    def __init__(self, at: int, recorder: Recorder):
        self.at, self.recorder = at, recorder

    def on_step_end(self, state, logs, batch_indices):
        self.recorder.on_step_end(state, logs, batch_indices)
        if state.global_step == self.at:
            raise SystemExit("killed")


def test_resume_gives_the_same_weights_and_batches(assets):
    # Validation at step 3 runs in the straight run but not in the resumed one: it must not change the model.
    common = dict(
        max_train_steps=6,
        checkpointing_steps=3,
        learning_rate=1e-3,
        validation_steps=3,
        validation_data=[assets["val"]],
    )
    straight = Recorder()
    train(tiny_config(str(assets["root"] / "straight"), assets["train"], assets["ocr"], **common), straight)
    reset_accelerate()

    out = str(assets["root"] / "resumed")
    first = Recorder()
    with pytest.raises(SystemExit):
        train(tiny_config(out, assets["train"], assets["ocr"], **common), Kill(4, first))
    assert ckpt.latest_checkpoint(out).endswith("checkpoint-3")
    reset_accelerate()
    second = Recorder()
    train(tiny_config(out, assets["train"], assets["ocr"], resume_from_checkpoint="latest", **common), second)

    assert sorted(second.indices) == [4, 5, 6]
    resumed_batches = {s: first.indices[s] for s in (1, 2, 3)} | second.indices
    assert resumed_batches == straight.indices
    a, b = trainable_weights(str(assets["root"] / "straight")), trainable_weights(out)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"resume: max |straight - resumed| = {diff:.3e}")
    assert diff <= 1e-6, f"max |straight - resumed| = {diff:.3e}"
    # the weights did move, so the comparison means something
    start = trainable_weights(os.path.join(out, "checkpoint-3"))
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-5


# ------------------------------------------------------------------------------------------------
# 7: faults
# ------------------------------------------------------------------------------------------------
class InjectNaN(TrainingCallback):
    def __init__(self, steps):
        self.steps = set(steps)

    def on_loss(self, state, output):
        if state.global_step in self.steps:  # 0-based: the step being computed
            output.loss = output.loss * float("nan")
        return output


def test_torch_compile_trains_the_same_weights(assets):
    """--torch_compile through the whole loop. The aot_eager backend runs what inductor would compile (dynamo
    capture of the UNet with its AttnX hooks, and of WriteNet; AOTAutograd's forward and backward graphs)
    without code generation, which takes minutes on this CPU; the trained weights must be the eager ones, and
    checkpoints must keep the plain parameter names."""
    common = dict(max_train_steps=2, checkpointing_steps=1, mask_ratio=0.5)
    eager_out, compiled_out = str(assets["root"] / "eager"), str(assets["root"] / "compiled")
    train(tiny_config(eager_out, assets["train"], assets["ocr"], **common))
    reset_accelerate()
    config = tiny_config(
        compiled_out, assets["train"], assets["ocr"], torch_compile=True, torch_compile_backend="aot_eager", **common
    )
    assert parse_args(["--torch_compile", "--torch_compile_backend", "aot_eager"]).torch_compile_backend == "aot_eager"
    result = train(config)
    assert result.global_step == 2
    eager, compiled = trainable_weights(eager_out), trainable_weights(compiled_out)
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=0, atol=1e-6, msg=key)
    first = trainable_weights(os.path.join(compiled_out, "checkpoint-1"))
    assert first.keys() == compiled.keys()  # no "_orig_mod." in the checkpoint either
    moved = max((compiled[k] - t).abs().max().item() for k, t in first.items())
    assert moved > 1e-5  # the second step trained something, so the equality is not trivial


def test_nan_loss_is_skipped_and_counted(assets):
    out = str(assets["root"] / "nan")
    config = tiny_config(
        out, assets["train"], assets["ocr"], max_train_steps=3, checkpointing_steps=1, learning_rate=1e-3
    )
    result = train(config, InjectNaN({1}))
    assert result.nonfinite_total == 1
    w1, w2, w3 = (trainable_weights(os.path.join(out, f"checkpoint-{s}")) for s in (1, 2, 3))
    # BatchNorm statistics of the font recognizer (train mode) follow every forward pass, as in the reference.
    params = [k for k in w1 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(w1[k], w2[k]) for k in params), "the NaN step must not change the weights"
    assert any(not torch.equal(w2[k], w3[k]) for k in params), "training continues after the NaN step"
    assert ckpt.TrainingState.load(os.path.join(out, "checkpoint-3")).nonfinite_total == 1


def test_nan_losses_in_a_row_stop_with_a_checkpoint(assets):
    out = str(assets["root"] / "diverged")
    config = tiny_config(out, assets["train"], assets["ocr"], max_train_steps=5, max_nonfinite_steps=2)
    with pytest.raises(TrainingDiverged, match="2 non-finite losses in a row"):
        train(config, InjectNaN(range(10)))
    assert ckpt.latest_checkpoint(out).endswith("checkpoint-2")


class SendSigterm(TrainingCallback):
    def on_step_end(self, state, logs, batch_indices):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_loadable_checkpoint(assets):
    out = str(assets["root"] / "sigterm")
    config = tiny_config(out, assets["train"], assets["ocr"], max_train_steps=5)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = train(config, SendSigterm())
    assert result.interrupted and result.global_step == 2
    path = ckpt.latest_checkpoint(out)
    assert path.endswith("checkpoint-2") and ckpt.is_complete(path)
    assert not os.path.exists(os.path.join(out, "model_index.json"))  # interrupted runs write no final folder
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # train() restored them
    with open(os.path.join(out, "training_config.yaml")) as f:
        assert yaml.safe_load(f)["max_train_steps"] == 5
    reset_accelerate()
    resumed = train(
        tiny_config(out, assets["train"], assets["ocr"], max_train_steps=3, resume_from_checkpoint="latest")
    )
    assert resumed.global_step == 3 and not resumed.interrupted
