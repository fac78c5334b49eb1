"""Data-parallel training with real ``torch.distributed`` (gloo, CPU, 127.0.0.1): 2 processes launched by
``accelerate launch --multi_gpu`` against 1 process with the same global batch of 4.

The runs keep the font recognizer in eval mode (``font_ocr_train_mode=False``): in train mode its
BatchNorm normalises with the statistics of each process's own crops, and its dropout draws from a
per-process RNG, so 1 x 4 samples and 2 x 2 samples are legitimately different computations. Everything
else in a step is per sample (per-sample generators for the VAE posterior, noise and timestep; mean
losses that DDP averages), which is what these tests prove.

Weights are compared with 1 process x 2 samples x 2 accumulation steps (the same micro-batches as the
2 processes): against 1 process x 4 samples the losses agree to float32 precision but the weights drift
by up to ~5e-4 in 3 steps. The tiny stack has one channel per GroupNorm group (32 channels, 32 groups),
and on near-blank 64 px hints those groups are almost constant, so round-off in their mean (which
depends on the batch size the CPU kernels see) is amplified into gradient differences that AdamW's
sign-like first updates turn into +-lr. ``test_one_big_batch_gives_the_same_losses`` covers that case.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from _distributed_helpers import (
    driver_config,
    free_port,
    launch,
    launcher_args,
    make_assets,
    max_difference,
    read_ranks,
    train_one_process,
)
from _training_helpers import trainable_weights


def two_processes(port: int) -> list[str]:
    """configs/accelerate/cpu_ddp_2.yaml with a free port."""
    return launcher_args("cpu_ddp_2.yaml", port)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory, "distributed")


@pytest.fixture(scope="module")
def one_process(assets):
    """The reference: 1 process, 2 samples x 2 accumulation steps = the 2 processes' global batch of 4."""
    return train_one_process(assets, "one", gradient_accumulation_steps=2)


@pytest.fixture(scope="module")
def two_process_run(assets):
    """2 processes x 2 samples, checkpoint every step (keep 2), TensorBoard logs and validation at step 2."""
    config = driver_config(
        assets,
        "two",
        checkpointing_steps=1,
        checkpoints_total_limit=2,
        report_to="tensorboard",
        validation_data=[assets["val"]],
        validation_steps=2,
    )
    proc = launch(config, two_processes(free_port()), assets["root"])
    return config, proc


def test_two_processes_give_the_weights_of_one(one_process, two_process_run):
    (one_dir, _), (config, _) = one_process, two_process_run
    ranks = read_ranks(config["output_dir"])
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["backend"] for r in ranks} == {"gloo"}
    assert [r["global_step"] for r in ranks] == [3, 3]
    one, two = trainable_weights(one_dir), trainable_weights(config["output_dir"])
    start = trainable_weights(os.path.join(config["output_dir"], "checkpoint-2"))
    assert max_difference(one, start) > 5e-5  # the last step moved the weights: the equality is not vacuous
    assert max_difference(one, two) <= 1e-5


def test_one_big_batch_gives_the_same_losses(assets, two_process_run):
    """1 process x 4 samples: the same per-step losses as 2 processes x 2 (see the module docstring)."""
    _, recorder = train_one_process(assets, "one-batch4", train_batch_size=4)
    ranks = read_ranks(two_process_run[0]["output_dir"])
    for step, rel in ((1, 1e-6), (2, 1e-4), (3, 1e-4)):  # step 1 from the same weights; then the drift above
        for key in ("t/sim", "t/ctc", "t/loss"):
            assert recorder.logs[step][key] == pytest.approx(ranks[0]["logs"][str(step)][key], rel=rel, abs=1e-7)


def test_each_process_gets_distinct_samples(one_process, two_process_run):
    (_, recorder), (config, _) = one_process, two_process_run
    one_indices = recorder.indices
    ranks = read_ranks(config["output_dir"])
    for step in ("1", "2", "3"):
        a, b = ranks[0]["indices"][step], ranks[1]["indices"][step]
        assert len(a) == len(b) == 2
        assert not set(a) & set(b), f"step {step}: both processes trained on {set(a) & set(b)}"
        assert sorted(a + b) == sorted(one_indices[int(step)])
    epoch0 = ranks[0]["indices"]["1"] + ranks[1]["indices"]["1"] + ranks[0]["indices"]["2"] + ranks[1]["indices"]["2"]
    assert sorted(epoch0) == list(range(8))  # one epoch = every sample exactly once


def test_checkpoints_saved_once_and_rotated(two_process_run):
    config, _ = two_process_run
    out = config["output_dir"]
    names = sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-3"]  # limit 2: checkpoint-1 rotated out, no partials
    files = os.listdir(os.path.join(out, "checkpoint-3"))
    assert {"random_states_0.pkl", "random_states_1.pkl", "training_state.json", "checkpoint_complete.json"} <= set(
        files
    )
    with open(os.path.join(out, "checkpoint-3", "training_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert state["global_step"] == 3 and state["samples_seen"] == 12


def test_logging_and_validation_on_the_main_process_only(two_process_run):
    config, proc = two_process_run
    out = config["output_dir"]
    events = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "logs")) for f in fs if "tfevents" in f]
    writers = {os.path.basename(e).split(".")[-2] for e in events}  # events.out.tfevents.TIME.HOST.PID.N
    assert len(events) >= 1 and len(writers) == 1, events  # one process wrote them (hparams add a subfolder)
    log = proc.stdout + proc.stderr
    assert log.count("validation at step 2:") == 1 and log.count("validation at step 3:") == 1  # + the final one
    assert sorted(os.listdir(os.path.join(out, "validation"))) == ["step-000002.png", "step-000003.png"]
    assert len(re.findall(r"saved \S+checkpoint-\d \(checkpointing_steps\)", log)) == 3  # not one per process
    assert [r["is_main_process"] for r in read_ranks(out)] == [True, False]


def test_resume_in_two_processes(assets, two_process_run):
    """checkpoint-2 of the 2-process run, resumed by 2 processes, reaches the straight run's step-3 weights."""
    config, _ = two_process_run
    resumed = str(assets["root"] / "resumed")
    os.makedirs(resumed)
    shutil.copytree(os.path.join(config["output_dir"], "checkpoint-2"), os.path.join(resumed, "checkpoint-2"))
    cfg = dict(
        config,
        output_dir=resumed,
        resume_from_checkpoint="latest",
        report_to="none",
        validation_data=[],
        validation_steps=None,
    )
    launch(cfg, two_processes(free_port()), assets["root"])
    ranks = read_ranks(resumed)
    straight = read_ranks(config["output_dir"])
    assert [list(r["indices"]) for r in ranks] == [["3"], ["3"]]
    assert [r["indices"]["3"] for r in ranks] == [r["indices"]["3"] for r in straight]
    assert max_difference(trainable_weights(resumed), trainable_weights(config["output_dir"])) == 0.0


def test_a_save_failing_on_the_main_process_fails_everywhere_and_training_goes_on(assets, two_process_run):
    """A write that fails on the main process only (a full disk at step 2): every process learns it, no
    process waits alone in a collective, checkpoint-2 is not left behind, and the run trains to the end with
    the weights of the run whose saves all worked."""
    config, _ = two_process_run
    out = str(assets["root"] / "failing-save")
    cfg = dict(config, output_dir=out, report_to="none", validation_data=[], validation_steps=None)
    proc = launch(dict(cfg, fail_save_at_step=2), two_processes(free_port()), assets["root"])
    assert [r["global_step"] for r in read_ranks(out)] == [3, 3]
    log = proc.stdout + proc.stderr
    assert "checkpoint at step 2 failed (OSError" in log  # the main process: its own error
    assert "checkpoint at step 2 failed (RuntimeError" in log  # the other process: told by the agreement
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == ["checkpoint-1", "checkpoint-3"]
    assert max_difference(trainable_weights(out), trainable_weights(config["output_dir"])) == 0.0
