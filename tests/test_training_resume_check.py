"""Resuming with a changed configuration (issue: a resume with another batch size, learning rate and resolution
was accepted silently; the new rate had no effect and the saved position was re-read in other batches)."""

from __future__ import annotations

import os
from dataclasses import fields

import pytest
import torch
from diffusers.optimization import get_scheduler

from anytext2_diffusers.training import checkpointing as ckpt
from anytext2_diffusers.training import resume_check
from anytext2_diffusers.training.config import TrainingConfig


def _checkpoint(folder, config: TrainingConfig, num_processes: int = 1) -> str:
    os.makedirs(folder)
    config.save(os.path.join(folder, ckpt.CONFIG_FILE))
    ckpt.TrainingState(global_step=5, num_processes=num_processes).save(str(folder))
    return str(folder)


def base(**kw) -> TrainingConfig:
    return TrainingConfig(
        **{**dict(train_batch_size=2, learning_rate=1e-3, resolution=128, train_data=["a.json"]), **kw}
    )


def test_run_defining_changes_are_refused_with_the_list(tmp_path):
    path = _checkpoint(tmp_path / "checkpoint-5", base())
    new = TrainingConfig(train_batch_size=1, learning_rate=5e-4, resolution=96, train_data=["a.json"])
    with pytest.raises(resume_check.ResumeRefused) as err:
        resume_check.check_resume(path, new, num_processes=1)
    message = str(err.value)
    for line in ("train_batch_size: 2 -> 1", "learning_rate: 0.001 -> 0.0005", "resolution: 128 -> 96"):
        assert line in message
    assert "--reset_lr_scheduler" in message and ckpt.CONFIG_FILE in message


@pytest.mark.parametrize(
    "change",
    [
        dict(gradient_accumulation_steps=3),
        dict(train_data=["b.json"]),
        dict(seed=1),
        dict(sd_locked=False),
        dict(unlock_qkv=True),
        dict(mixed_precision="bf16"),
        dict(lora_rank=4),
        dict(loss_alpha=0.003),
        dict(max_grad_norm=1.0),
    ],
)
def test_each_run_defining_option_is_refused(change):
    plan = resume_check.compare(base().to_dict(), base(**change).to_dict(), reset_lr_scheduler=True)
    assert [d.name for d in plan.refused] == list(change) and not plan.applied


def test_schedule_changes_are_applied_and_the_lr_only_with_the_flag(tmp_path, caplog):
    path = _checkpoint(tmp_path / "checkpoint-5", base())
    new = base(max_train_steps=80, validation_steps=7, checkpointing_steps=3)
    with caplog.at_level("INFO"):
        plan = resume_check.check_resume(path, new, num_processes=1)
    assert [d.name for d in plan.applied] == ["checkpointing_steps", "max_train_steps", "validation_steps"]
    assert "max_train_steps: None -> 80 (applied)" in caplog.text
    new = base(learning_rate=5e-4, reset_lr_scheduler=True)
    plan = resume_check.check_resume(path, new, num_processes=1)
    assert [str(d) for d in plan.learning_rate] == ["learning_rate: 0.001 -> 0.0005"] and not plan.refused


def test_another_number_of_processes_is_refused(tmp_path):
    path = _checkpoint(tmp_path / "checkpoint-5", base(), num_processes=2)
    with pytest.raises(resume_check.ResumeRefused, match="number of processes: 2 -> 1"):
        resume_check.check_resume(path, base(), num_processes=1)


def test_every_option_is_classified_on_purpose():
    """A new option is run-defining unless listed; the lists name only real options."""
    names = {f.name for f in fields(TrainingConfig)}
    for group in (resume_check.CHANGEABLE, resume_check.LEARNING_RATE, resume_check.NOT_COMPARED):
        assert group <= names, group - names


def test_a_checkpoint_without_a_saved_config_is_resumed_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoint-5"
    os.makedirs(folder)
    ckpt.TrainingState(global_step=5).save(str(folder))
    with caplog.at_level("WARNING"):
        assert resume_check.check_resume(str(folder), base(seed=3), 1).refused == []
    assert "not compared" in caplog.text


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_reset_lr_schedule_gives_the_restored_schedule_the_new_rate(schedule):
    """A restored scheduler keeps the old base rate (load_state_dict wins); the reset puts the new one in at the
    same position, and the optimizer then steps with it."""

    def make(lr):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
        return opt, get_scheduler(schedule, optimizer=opt, num_warmup_steps=0, num_training_steps=20)

    old_opt, old_sched = make(1e-3)
    for _ in range(5):
        old_opt.step()
        old_sched.step()
    opt, sched = make(5e-4)
    opt.load_state_dict(old_opt.state_dict())
    sched.load_state_dict(old_sched.state_dict())
    assert sched.get_last_lr()[0] == pytest.approx(old_sched.get_last_lr()[0])  # the old rate: the silent bug
    rates = resume_check.reset_lr_schedule(sched, 5e-4)
    fresh_opt, fresh = make(5e-4)
    for _ in range(5):
        fresh_opt.step()
        fresh.step()
    assert rates == pytest.approx(fresh.get_last_lr()) and opt.param_groups[0]["lr"] == pytest.approx(rates[0])
    opt.step()
    sched.step()
    fresh_opt.step()
    fresh.step()
    assert sched.get_last_lr() == pytest.approx(fresh.get_last_lr())
