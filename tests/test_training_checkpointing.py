"""Checkpoint folders: completion marker, `latest`, rotation, atomic writes, failed saves; the config."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import yaml

from anytext2_diffusers.training import checkpointing as ckpt
from anytext2_diffusers.training.config import DEMO_PRESET, TrainingConfig, parse_args


class FakeAccelerator:
    """What save_checkpoint / load_checkpoint use of Accelerator; ``fail`` makes save_state raise half-way.
    ``optimizer.bin`` is a real torch archive, read back with ``torch.load`` as accelerate does."""

    is_main_process = True

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.loaded = []

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        torch.save({"state": {0: {"exp_avg": torch.arange(4096.0)}}}, os.path.join(folder, "optimizer.bin"))
        if self.fail:
            raise OSError("No space left on device")

    def load_state(self, folder):
        torch.load(os.path.join(folder, "optimizer.bin"), weights_only=True)
        self.loaded.append(folder)


def make(output_dir, step, complete=True):
    state = ckpt.TrainingState(global_step=step)
    if complete:
        return ckpt.save_checkpoint(FakeAccelerator(), str(output_dir), state, total_limit=None)
    path = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(path)
    state.save(path)
    return path


def test_rotation_keeps_the_newest(tmp_path):
    for step in (10, 20, 30, 40, 50):
        ckpt.save_checkpoint(FakeAccelerator(), str(tmp_path), ckpt.TrainingState(global_step=step), total_limit=3)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [30, 40, 50]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-30", "checkpoint-40", "checkpoint-50"]
    assert ckpt.TrainingState.load(str(tmp_path / "checkpoint-50")).global_step == 50


def test_folder_without_marker_is_ignored(tmp_path):
    make(tmp_path, 5)
    make(tmp_path, 9, complete=False)  # e.g. a crash while writing (or a foreign folder)
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-5")
    assert ckpt.resolve_resume(str(tmp_path), "latest").endswith("checkpoint-5")
    with pytest.raises(ValueError, match="not completely written"):
        ckpt.resolve_resume(str(tmp_path), str(tmp_path / "checkpoint-9"))
    # rotation never counts (or deletes) incomplete folders
    ckpt.rotate(str(tmp_path), 1)
    assert os.path.isdir(tmp_path / "checkpoint-9") and os.path.isdir(tmp_path / "checkpoint-5")


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    assert ckpt.resolve_resume(str(tmp_path), "latest") is None
    assert ckpt.resolve_resume(str(tmp_path), None) is None
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_resume(str(tmp_path), "checkpoint-3")


def test_failed_save_leaves_earlier_checkpoints_intact(tmp_path):
    make(tmp_path, 1)
    make(tmp_path, 2)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(FakeAccelerator(fail=True), str(tmp_path), ckpt.TrainingState(global_step=3), 2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2"]  # no partial folder, nothing rotated
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-2")


def test_same_step_saved_twice_and_unmarked_partials_removed(tmp_path):
    make(tmp_path, 4)
    make(tmp_path, 4)
    os.makedirs(tmp_path / "checkpoint-7.partial")  # an interrupted write: no marker
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    ckpt.recover_partials(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


class Killed(BaseException):
    """Stands for a SIGKILL at one moment of the swap (nothing after it runs)."""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_while_the_same_step_is_saved_again_keeps_that_checkpoint(tmp_path, monkeypatch, kill_at):
    """Issue case 5: the swap was rmtree(final) + rename(partial, final); a kill between them left only the
    marked partial, which the next start deleted. Now each moment of the swap (1: the old folder moved aside,
    2: the new one renamed, 3: the old one deleted) leaves one complete checkpoint-4 after the next start."""
    make(tmp_path, 4)
    calls = []
    real = {"replace": os.replace, "rmtree": ckpt.shutil.rmtree}

    def step(name):
        def run(*args, **kw):
            if os.path.basename(str(args[0])).startswith("checkpoint-4"):  # the swap's moves, in order
                calls.append(name)
                if len(calls) == kill_at:
                    raise Killed
            return real[name](*args, **kw)

        return run

    monkeypatch.setattr(ckpt.os, "replace", step("replace"))
    monkeypatch.setattr(ckpt.shutil, "rmtree", step("rmtree"))
    with pytest.raises(Killed):
        ckpt.save_checkpoint(FakeAccelerator(), str(tmp_path), ckpt.TrainingState(global_step=4), None)
    monkeypatch.undo()
    ckpt.recover_partials(str(tmp_path))  # what the next start does
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]
    assert ckpt.latest_checkpoint(str(tmp_path), hashes=True).endswith("checkpoint-4")


def test_marker_lists_sizes_and_hashes(tmp_path):
    path = make(tmp_path, 3)
    with open(os.path.join(path, ckpt.MARKER)) as f:
        files = json.load(f)["files"]
    assert sorted(files) == ["optimizer.bin", "training_state.json"]
    assert files["optimizer.bin"]["size"] == os.path.getsize(os.path.join(path, "optimizer.bin"))
    assert (
        files["optimizer.bin"]["sha256"]
        == hashlib.sha256(open(os.path.join(path, "optimizer.bin"), "rb").read()).hexdigest()
    )
    assert ckpt.verify(path) == []


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_truncated_optimizer_file_is_named_and_latest_falls_back(tmp_path, caplog):
    """Issue case 4: a truncated optimizer.bin failed with 'PytorchStreamReader failed reading zip archive' and no
    file name."""
    make(tmp_path, 1)
    bad = make(tmp_path, 2)
    _truncate(os.path.join(bad, "optimizer.bin"))
    with caplog.at_level("WARNING"):
        assert ckpt.resolve_resume(str(tmp_path), "latest").endswith("checkpoint-1")
    assert "checkpoint-2" in caplog.text and "optimizer.bin" in caplog.text  # skipped with a warning
    with pytest.raises(ckpt.CheckpointDamaged) as err:
        ckpt.resolve_resume(str(tmp_path), bad)
    message = str(err.value)
    assert "optimizer.bin" in message and "truncated" in message
    assert "checkpoint-1" in message and "--fallback_to_previous_checkpoint" in message
    assert ckpt.resolve_resume(str(tmp_path), bad, fallback=True).endswith("checkpoint-1")


def test_a_bit_flip_is_caught_by_the_hash(tmp_path):
    make(tmp_path, 1)
    bad = make(tmp_path, 2)
    with open(os.path.join(bad, "optimizer.bin"), "r+b") as f:
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 1]))
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-2")  # sizes only: cheap, misses it
    assert ckpt.resolve_resume(str(tmp_path), "latest").endswith("checkpoint-1")  # hashes: caught
    assert "sha256" in ckpt.verify(bad)[0]


def test_a_load_failure_names_the_file_and_offers_or_takes_the_previous_checkpoint(tmp_path):
    """Checkpoints without the file table (written before it existed): the failed load is probed for the file."""
    make(tmp_path, 1)
    bad = make(tmp_path, 2)
    for path in (os.path.join(tmp_path, "checkpoint-1"), bad):  # drop the table: an older marker
        with open(os.path.join(path, ckpt.MARKER), "w") as f:
            json.dump({"global_step": 0}, f)
    _truncate(os.path.join(bad, "optimizer.bin"))
    accelerator = FakeAccelerator()
    with pytest.raises(ckpt.CheckpointDamaged, match="optimizer.bin.*--resume_from_checkpoint .*checkpoint-1"):
        ckpt.load_checkpoint(accelerator, bad, str(tmp_path))
    loaded = ckpt.load_checkpoint(accelerator, bad, str(tmp_path), fallback=True)
    assert loaded.endswith("checkpoint-1") and accelerator.loaded == [loaded]


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def test_defaults_are_the_reference_values():
    c = parse_args([])
    assert (c.train_batch_size, c.gradient_accumulation_steps, c.learning_rate, c.num_train_epochs) == (3, 2, 2e-5, 15)
    assert (c.resolution, c.max_lines, c.max_chars, c.mask_ratio, c.font_hint_prob) == (512, 5, 20, 0.0, 0.8)
    assert (c.font_hint_area, c.color_prob, c.wm_thresh, c.rand_font, c.font_hint_randaug) == (
        [0.7, 1.0],
        1.0,
        1.0,
        True,
        True,
    )
    assert (c.sd_locked, c.only_mid_control, c.unlock_qkv, c.train_text_embedding, c.train_font_ocr) == (
        True,
        False,
        False,
        True,
        True,
    )
    assert (c.loss_alpha, c.loss_beta, c.latin_weight, c.with_step_weight, c.use_vae_upsample) == (
        0,
        0,
        1.0,
        True,
        True,
    )
    assert (c.attnx_mid_block, c.attnx_up_blocks, c.attnx_down_blocks) == (True, [1, 2], [])
    assert (c.adam_weight_decay, c.adam_epsilon, c.checkpointing_epochs, c.checkpoints_total_limit) == (
        0.01,
        1e-8,
        1,
        3,
    )
    assert c.report_to == "tensorboard" and c.max_grad_norm is None


def test_yaml_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "learning_rate": 1e-4,
                "train_data": ["a.json"],
                "sd_locked": False,
                "font_hint_area": [0.5, 0.9],
                "max_train_steps": 100,
            }
        )
    )
    c = parse_args(["--config", str(path), "--learning_rate", "3e-5", "--sd_locked", "--attnx_up_blocks", "1"])
    assert c.learning_rate == 3e-5 and c.sd_locked is True  # the command line wins
    assert c.train_data == ["a.json"] and c.font_hint_area == [0.5, 0.9] and c.max_train_steps == 100
    assert c.attnx_up_blocks == [1]
    saved = tmp_path / "resolved.yaml"
    c.hub_token = "hf_secret"
    c.save(str(saved))
    assert "hf_secret" not in saved.read_text()
    again = parse_args(["--config", str(saved)])
    assert again.to_dict() == {**c.to_dict(), "hub_token": None}


def test_step_checkpoints_replace_the_epoch_default():
    assert parse_args([]).checkpointing_epochs == 1
    c = parse_args(["--checkpointing_steps", "500"])
    assert (c.checkpointing_steps, c.checkpointing_epochs) == (500, 0)
    c = parse_args(["--checkpointing_steps", "500", "--checkpointing_epochs", "2"])
    assert (c.checkpointing_steps, c.checkpointing_epochs) == (500, 2)


def test_bad_yaml_key_and_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ValueError, match="unknown keys \\['learning_rat'\\]"):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainingConfig(resolution=100)


def test_demo_preset_under_yaml_and_cli(tmp_path):
    from anytext2_diffusers.utils.assets import demo_model_dir

    c = parse_args(["--demo", "--max_train_steps", "7"])
    assert c.max_train_steps == 7 and c.resolution == DEMO_PRESET["resolution"]
    # the demo fine-tunes the shipped demo model (not random tiny weights) with AnyText2's frozen UNet
    assert not c.tiny_model and c.pretrained_model_name_or_path == demo_model_dir() and c.sd_locked
    path = tmp_path / "d.yaml"
    path.write_text("demo: true\nresolution: 64\ntiny_model: true\n")
    c = parse_args(["--config", str(path)])
    assert c.tiny_model and c.resolution == 64


def test_docs_option_tables_are_current():
    from pathlib import Path

    from anytext2_diffusers.training.config import options_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    assert options_markdown() in docs, "docs/training.md: regenerate the 'All options' tables (options_markdown)"
