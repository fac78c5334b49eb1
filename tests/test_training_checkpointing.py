"""Checkpoint folders: completion marker, `latest`, rotation, atomic writes, failed saves; the config."""

from __future__ import annotations

import os

import pytest
import yaml

from anytext2_diffusers.training import checkpointing as ckpt
from anytext2_diffusers.training.config import DEMO_PRESET, TrainingConfig, parse_args


class FakeAccelerator:
    """What save_checkpoint uses of Accelerator; ``fail`` makes save_state raise half-way."""

    is_main_process = True

    def __init__(self, fail: bool = False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        with open(os.path.join(folder, "optimizer.bin"), "wb") as f:
            f.write(b"x")
        if self.fail:
            raise OSError("No space left on device")


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


def test_same_step_saved_twice_and_partials_removed(tmp_path):
    make(tmp_path, 4)
    make(tmp_path, 4)
    os.makedirs(tmp_path / "checkpoint-7.partial")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    ckpt.remove_partials(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


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
    c = parse_args(["--demo", "--max_train_steps", "7"])
    assert c.tiny_model and c.max_train_steps == 7 and c.resolution == DEMO_PRESET["resolution"]
    path = tmp_path / "d.yaml"
    path.write_text("demo: true\nresolution: 64\n")
    c = parse_args(["--config", str(path)])
    assert c.tiny_model and c.resolution == 64


def test_docs_option_tables_are_current():
    from pathlib import Path

    from anytext2_diffusers.training.config import options_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    assert options_markdown() in docs, "docs/training.md: regenerate the 'All options' tables (options_markdown)"
