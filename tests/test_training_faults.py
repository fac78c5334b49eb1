"""Runs that cannot silently corrupt, end to end on the tiny stack: a second writer, a resume with a changed
run, a new learning rate, a damaged optimizer file, a full disk at the end. Faults injected in-process."""

from __future__ import annotations

import errno
import os
import shutil
from unittest import mock

import pytest
import safetensors.torch
import yaml
from _training_helpers import Recorder, make_data, reset_accelerate, save_small_recognizer, tiny_config

import anytext2_diffusers.training as training
from anytext2_diffusers.training import TrainingCallback, train
from anytext2_diffusers.training import checkpointing as ckpt
from anytext2_diffusers.training.checkpointing import CheckpointDamaged
from anytext2_diffusers.training.output import STAGING, FinalSaveError
from anytext2_diffusers.training.resume_check import ResumeRefused
from anytext2_diffusers.training.run_lock import LOCK_FILE, OutputDirLocked, OutputLock

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_assets")
    return dict(root=root, ocr=save_small_recognizer(str(root / "ocr")), train=make_data(str(root / "train"), 4, 0))


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


def config(assets, out, **kw):
    values = dict(max_train_steps=3, checkpointing_steps=1, learning_rate=1e-3)
    return tiny_config(str(out), assets["train"], assets["ocr"], **{**values, **kw})


@pytest.fixture(scope="module")
def three_steps(assets):
    """A finished 3-step run with a checkpoint after every step; tests work on copies."""
    out = assets["root"] / "three_steps"
    train(config(assets, out))
    reset_accelerate()
    return out


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def test_a_second_writer_is_refused_before_it_writes_anything(assets, tmp_path):
    out = tmp_path / "run"
    with OutputLock(str(out)):
        with pytest.raises(OutputDirLocked, match=f"pid {os.getpid()} on "):
            train(config(assets, out))
        assert os.listdir(out) == [LOCK_FILE]
    assert not os.path.exists(out / LOCK_FILE)


def test_a_resume_that_changes_the_run_is_refused_and_the_saved_config_kept(assets, three_steps, tmp_path):
    out = copy_of(three_steps, tmp_path)
    before = (out / "training_config.yaml").read_text()
    changed = config(
        assets, out, train_batch_size=1, learning_rate=5e-4, resolution=96, resume_from_checkpoint="latest"
    )
    with pytest.raises(ResumeRefused) as err:
        train(changed)
    for line in ("train_batch_size: 2 -> 1", "learning_rate: 0.001 -> 0.0005", "resolution: 64 -> 96"):
        assert line in str(err.value)
    assert (out / "training_config.yaml").read_text() == before
    assert not os.path.exists(out / LOCK_FILE)  # released on the way out


def test_a_new_learning_rate_with_reset_lr_scheduler_is_used_and_saved(assets, three_steps, tmp_path):
    out = copy_of(three_steps, tmp_path)
    recorder = Recorder()
    resumed = config(
        assets, out, max_train_steps=4, learning_rate=5e-4, reset_lr_scheduler=True, resume_from_checkpoint="latest"
    )
    train(resumed, recorder)
    assert list(recorder.logs) == [4] and recorder.logs[4]["lr"] == pytest.approx(5e-4)
    for path in (out / "training_config.yaml", out / "checkpoint-4" / ckpt.CONFIG_FILE):
        saved = yaml.safe_load(path.read_text())
        assert (saved["learning_rate"], saved["max_train_steps"]) == (5e-4, 4), path


def test_a_truncated_optimizer_file_is_named_and_latest_resumes_from_the_previous_checkpoint(
    assets, three_steps, tmp_path, caplog
):
    out = copy_of(three_steps, tmp_path)
    optimizer = out / "checkpoint-3" / "optimizer.bin"
    with open(optimizer, "r+b") as f:
        f.truncate(optimizer.stat().st_size // 2)
    with pytest.raises(CheckpointDamaged, match="optimizer.bin.*checkpoint-2"):
        train(config(assets, out, resume_from_checkpoint=str(out / "checkpoint-3")))
    reset_accelerate()
    recorder = Recorder()
    with caplog.at_level("WARNING"):
        train(config(assets, out, resume_from_checkpoint="latest"), recorder)
    assert "skipping damaged" in caplog.text and "optimizer.bin" in caplog.text
    assert list(recorder.logs) == [3]  # step 3 trained again, from checkpoint-2


class FullDiskInFinalFolder(TrainingCallback):
    """From the end of training on, every safetensors file written into the final folder's staging fills the disk."""

    def __init__(self):
        self.real = safetensors.torch.save_file

    def on_train_end(self, parts):
        def save_file(tensors, filename, metadata=None):
            if STAGING in filename:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.real(tensors, filename, metadata=metadata)

        safetensors.torch.save_file = save_file

    def undo(self):
        safetensors.torch.save_file = self.real


def test_a_full_disk_at_the_end_keeps_the_steps_in_a_checkpoint_and_says_so(assets, tmp_path):
    out = tmp_path / "run"
    fault = FullDiskInFinalFolder()
    try:
        with pytest.raises(FinalSaveError) as err:
            train(config(assets, out, max_train_steps=2, checkpointing_steps=None), fault)
    finally:
        fault.undo()
    message = str(err.value)
    assert "No space left on device" in message and "MiB" in message and "checkpoint-2" in message
    assert "\n" not in message
    assert not os.path.exists(out / "model_index.json") and not os.path.exists(out / "unet")
    assert ckpt.latest_checkpoint(str(out), hashes=True).endswith("checkpoint-2")
    reset_accelerate()
    recorder = Recorder()
    train(config(assets, out, max_train_steps=2, checkpointing_steps=None, resume_from_checkpoint="latest"), recorder)
    assert recorder.logs == {} and os.path.isfile(out / "model_index.json")  # no step repeated, folder written


def test_main_reports_a_refusal_in_one_line_and_exits_non_zero(caplog):
    from anytext2_diffusers.training import loop

    with mock.patch.object(loop, "train", side_effect=FinalSaveError("the final pipeline folder was not written")):
        assert training.main(["--demo"]) == 1
    assert "the final pipeline folder was not written" in caplog.text and "Traceback" not in caplog.text
