"""Training in 2 processes with real ``torch.distributed`` (gloo, CPU, 127.0.0.1) against 1 process with the same
global batch of 4: the tests every launch config must pass, run for DDP (``cpu_ddp_2.yaml``), FSDP2
(``cpu_fsdp_2.yaml``) and DeepSpeed ZeRO-2 (``deepspeed_zero2.yaml``), then what only DDP shows. What is
particular to FSDP and DeepSpeed: ``test_fsdp.py``, ``test_deepspeed.py``.

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
    KINDS,
    LAUNCH_ARGS,
    free_port,
    launch,
    max_difference,
    read_ranks,
    train_one_process,
)
from _training_helpers import trainable_weights

from anytext2_diffusers.training import checkpointing as ckpt

# Max weight difference to 1 process after 3 steps (float32 round-off): FSDP reduce-scatters gradients where
# DDP all-reduces them; measured 0 for all three. Per-step losses: relative, measured equal to ~1e-7.
WEIGHT_TOLERANCE = {"ddp": 1e-5, "fsdp": 1e-5, "deepspeed": 1e-6}
LOSS_TOLERANCE = {"ddp": 1e-5, "fsdp": 1e-5, "deepspeed": 1e-6}


# ------------------------------------------------------------------------------------- every launch config


@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_give_the_weights_of_one(launches, kind):
    (one_dir, recorder), (config, _) = launches.one_process(), launches.run(kind)
    out = config["output_dir"]
    ranks = read_ranks(out)
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["backend"] for r in ranks} == {"gloo"}
    assert [r["global_step"] for r in ranks] == [3, 3]
    for step in ("1", "2", "3"):  # the same samples and losses per step as the 1-process run
        assert sorted(ranks[0]["indices"][step] + ranks[1]["indices"][step]) == sorted(recorder.indices[int(step)])
        expected = recorder.logs[int(step)]["t/loss"]
        assert ranks[0]["logs"][step]["t/loss"] == pytest.approx(expected, rel=LOSS_TOLERANCE[kind])
    one, two = trainable_weights(one_dir), trainable_weights(out)
    start = trainable_weights(os.path.join(out, "checkpoint-2"))
    assert max_difference(one, start) > 5e-5  # the last step moved the weights: the equality is not vacuous
    difference = max_difference(one, two)
    print(f"{kind} vs 1 process: max weight difference {difference:.3g}")
    assert difference <= WEIGHT_TOLERANCE[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_saved_once_and_rotated(launches, kind):
    config, proc = launches.run(kind)
    out = config["output_dir"]
    names = sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-3"]  # limit 2: checkpoint-1 rotated out, no partials
    folder = os.path.join(out, "checkpoint-3")
    assert {"controlnet", "attnx", "text_embedding", ckpt.MARKER, ckpt.STATE_FILE} <= set(os.listdir(folder))
    with open(os.path.join(folder, ckpt.STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    assert state["global_step"] == 3 and state["samples_seen"] == 12
    log = proc.stdout + proc.stderr
    assert len(re.findall(r"saved \S+checkpoint-\d \(checkpointing_steps\)", log)) == 3  # not one per process
    # The component folders hold the whole float32 weights: at the last step, those of the final folder.
    assert max_difference(trainable_weights(folder), trainable_weights(out)) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_logging_and_validation_on_the_main_process_only(launches, kind):
    config, proc = launches.run(kind)
    out = config["output_dir"]
    events = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "logs")) for f in fs if "tfevents" in f]
    writers = {os.path.basename(e).split(".")[-2] for e in events}  # events.out.tfevents.TIME.HOST.PID.N
    assert len(events) >= 1 and len(writers) == 1, events  # one process wrote them (hparams add a subfolder)
    log = proc.stdout + proc.stderr
    assert log.count("validation at step 2:") == 1 and log.count("validation at step 3:") == 1  # + the final one
    assert sorted(os.listdir(os.path.join(out, "validation"))) == ["step-000002.png", "step-000003.png"]
    assert [r["is_main_process"] for r in read_ranks(out)] == [True, False]


@pytest.mark.parametrize("kind", KINDS)
def test_output_folder_loads(launches, kind):
    import torch

    from anytext2_diffusers.pipelines import AnyText2Pipeline

    config, _ = launches.run(kind)
    pipe = AnyText2Pipeline.from_pretrained(config["output_dir"])
    assert pipe.controlnet is not None and pipe.attnx is not None and pipe.text_embedding is not None
    final = trainable_weights(config["output_dir"])
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


@pytest.mark.parametrize("kind", KINDS)
def test_resume_in_two_processes(launches, kind):
    """checkpoint-2, resumed by 2 processes of the same launch config, reaches the straight run's step-3 weights
    (optimizer state included: DDP's, FSDP's sharded one, DeepSpeed's ZeRO partitions)."""
    config, _ = launches.run(kind)
    resumed = str(launches.assets["root"] / f"resumed-{kind}")
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
    launch(cfg, LAUNCH_ARGS[kind](free_port()), launches.assets["root"])
    ranks = read_ranks(resumed)
    straight = read_ranks(config["output_dir"])
    assert [list(r["indices"]) for r in ranks] == [["3"], ["3"]]
    assert [r["indices"]["3"] for r in ranks] == [r["indices"]["3"] for r in straight]
    assert max_difference(trainable_weights(resumed), trainable_weights(config["output_dir"])) == 0.0


# ------------------------------------------------------------------------------------- DDP


def test_one_big_batch_gives_the_same_losses(launches):
    """1 process x 4 samples: the same per-step losses as 2 processes x 2 (see the module docstring)."""
    _, recorder = train_one_process(launches.assets, "one-batch4", train_batch_size=4)
    ranks = read_ranks(launches.run("ddp")[0]["output_dir"])
    for step, rel in ((1, 1e-6), (2, 1e-4), (3, 1e-4)):  # step 1 from the same weights; then the drift above
        for key in ("t/sim", "t/ctc", "t/loss"):
            assert recorder.logs[step][key] == pytest.approx(ranks[0]["logs"][str(step)][key], rel=rel, abs=1e-7)


def test_each_process_gets_distinct_samples(launches):
    (_, recorder), (config, _) = launches.one_process(), launches.run("ddp")
    one_indices = recorder.indices
    ranks = read_ranks(config["output_dir"])
    for step in ("1", "2", "3"):
        a, b = ranks[0]["indices"][step], ranks[1]["indices"][step]
        assert len(a) == len(b) == 2
        assert not set(a) & set(b), f"step {step}: both processes trained on {set(a) & set(b)}"
        assert sorted(a + b) == sorted(one_indices[int(step)])
    epoch0 = ranks[0]["indices"]["1"] + ranks[1]["indices"]["1"] + ranks[0]["indices"]["2"] + ranks[1]["indices"]["2"]
    assert sorted(epoch0) == list(range(8))  # one epoch = every sample exactly once


def test_ddp_checkpoints_hold_every_process_rng(launches):
    folder = os.path.join(launches.run("ddp")[0]["output_dir"], "checkpoint-3")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(folder))


def test_a_save_failing_on_the_main_process_fails_everywhere_and_training_goes_on(launches):
    """A write that fails on the main process only (a full disk at step 2): every process learns it, no
    process waits alone in a collective, checkpoint-2 is not left behind, and the run trains to the end with
    the weights of the run whose saves all worked."""
    config, _ = launches.run("ddp")
    out = str(launches.assets["root"] / "failing-save")
    cfg = dict(config, output_dir=out, report_to="none", validation_data=[], validation_steps=None)
    proc = launch(dict(cfg, fail_save_at_step=2), LAUNCH_ARGS["ddp"](free_port()), launches.assets["root"])
    assert [r["global_step"] for r in read_ranks(out)] == [3, 3]
    log = proc.stdout + proc.stderr
    assert "checkpoint at step 2 failed (OSError" in log  # the main process: its own error
    assert "checkpoint at step 2 failed (RuntimeError" in log  # the other process: told by the agreement
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == ["checkpoint-1", "checkpoint-3"]
    assert max_difference(trainable_weights(out), trainable_weights(config["output_dir"])) == 0.0
