"""The final pipeline folder is written like a checkpoint (issue: a full disk at the end left a half-written
pipeline, `text_encoder tokenizer unet vae` without model_index.json, and lost the steps since the last
checkpoint). Faults are injected in-process: a writer that fills the disk half-way, a kill during the swap."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
import safetensors.torch

from anytext2_diffusers.testing import tiny_pipeline
from anytext2_diffusers.training import output
from anytext2_diffusers.training.output import FinalSaveError, save_pipeline_folder


@pytest.fixture(scope="module")
def parts():
    return dict(tiny_pipeline(seed=0).components)


def snapshot(folder) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def full_disk_after(n_files: int):
    """A ``safetensors.torch.save_file`` that writes ``n_files`` files, then half of the next one and fails."""
    real, count = safetensors.torch.save_file, [0]

    def save_file(tensors, filename, metadata=None):
        count[0] += 1
        if count[0] <= n_files:
            return real(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save_file


def test_a_full_disk_on_a_first_save_leaves_no_half_written_pipeline(parts, tmp_path, monkeypatch):
    out = tmp_path / "run"
    os.makedirs(out / "checkpoint-5")  # what a run holds besides the pipeline
    (out / "training_config.yaml").write_text("seed: 0\n")
    before = snapshot(out)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_after(2))
    with pytest.raises(FinalSaveError) as err:
        save_pipeline_folder(parts, str(out))
    message = str(err.value)
    assert "No space left on device" in message and "MiB" in message and "\n" not in message
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["checkpoint-5", "training_config.yaml"]


def test_a_full_disk_on_a_second_save_keeps_the_first_pipeline_intact(parts, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save_pipeline_folder(parts, str(out))
    before = snapshot(out)
    assert "model_index.json" in before
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_after(1))
    with pytest.raises(FinalSaveError, match="nothing in it was replaced"):
        save_pipeline_folder(parts, str(out))
    assert snapshot(out) == before


def test_not_enough_space_is_stated_before_writing(parts, tmp_path, monkeypatch):
    needed = output._bytes_to_write(parts)
    assert needed > 0
    monkeypatch.setattr(output.shutil, "disk_usage", lambda path: _Usage(needed // 2))
    with pytest.raises(FinalSaveError, match=f"about {needed / 2**20:.0f} MiB, {needed / 2 / 2**20:.0f} MiB are free"):
        save_pipeline_folder(parts, str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == []


class _Usage:
    def __init__(self, free):
        self.free = free


class Killed(BaseException):
    pass


@pytest.mark.parametrize("kill_at", [1, 3, 6, 20])
def test_a_kill_during_the_swap_never_leaves_a_loadable_mix_and_the_next_save_recovers(
    parts, tmp_path, monkeypatch, kill_at
):
    out = tmp_path / "run"
    save_pipeline_folder(parts, str(out))
    first = snapshot(out)
    real, calls = os.replace, [0]
    swap_dirs = (str(out), str(out / output.ASIDE))

    def replace(src, dst):  # os is global: count only the swap's moves, not the libraries' own
        if os.path.dirname(str(dst)) in swap_dirs:
            calls[0] += 1
            if calls[0] == kill_at:
                raise Killed
        return real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    with pytest.raises(Killed):
        save_pipeline_folder(parts, str(out))
    monkeypatch.undo()

    def visible():
        return {k: v for k, v in snapshot(out).items() if not k.startswith((output.STAGING, output.ASIDE))}

    # either untouched, or no model_index.json: a half-swapped folder must not look like a pipeline
    assert visible() == first or "model_index.json" not in visible()
    output._put_back(str(out))  # what the next save does first
    assert visible() == first
    save_pipeline_folder(parts, str(out))
    assert snapshot(out) == first  # same weights: the same files, nothing left over


def test_lora_final_save_stages_its_adapters_and_a_failure_keeps_the_earlier_folder(tmp_path, monkeypatch):
    """LoRA runs write their adapter files into the staged folder too: a full disk leaves the earlier folder,
    adapters included, as it was; a later save without adapters (merged) removes the earlier adapter files."""
    from anytext2_diffusers.training import lora
    from anytext2_diffusers.training.config import TrainingConfig

    out = tmp_path / "run"
    config = TrainingConfig(
        output_dir=str(out), lora_rank=2, lora_components=["unet", "controlnet"], merge_lora_at_end=False
    )
    lora_parts = dict(tiny_pipeline(seed=0).components)
    lora.add_adapters(lora_parts, config)
    lora.save_final(lora_parts, config)
    assert {lora.UNET_LORA_WEIGHTS, "controlnet_lora", "model_index.json"} <= set(os.listdir(out))
    before = snapshot(out)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_after(3))
    with pytest.raises(FinalSaveError):
        lora.save_final(lora_parts, config)
    assert snapshot(out) == before  # adapters and base components untouched, no staging left behind
    monkeypatch.undo()

    config.merge_lora_at_end = True
    lora.save_final(lora_parts, config)
    names = set(os.listdir(out))
    assert "model_index.json" in names and not names & set(lora.ADAPTER_FILES), sorted(names)
