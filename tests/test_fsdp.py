"""FSDP2 with real ``torch.distributed`` (gloo, CPU, 127.0.0.1): 2 processes launched with
``configs/accelerate/cpu_fsdp_2.yaml`` (``fsdp_version: 2``, the whole ``AnyText2TrainingModel`` one unit, sharded
state dicts) against 1 process with the same micro-batches (2 samples x 2 accumulation steps), which
``test_distributed.py`` proves equal to the 2-process DDP run.

The run checkpoints every step (keep 2), validates at step 2 on the main process (all processes unshard first)
and writes the final folder from the gathered parameters; a second launch resumes its ``checkpoint-2``.
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

TOLERANCE = 1e-5  # float32 round-off: FSDP reduce-scatters gradients where DDP all-reduces them


def fsdp_processes(port: int) -> list[str]:
    return launcher_args("cpu_fsdp_2.yaml", port)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory, "fsdp")


@pytest.fixture(scope="module")
def one_process(assets):
    return train_one_process(assets, "one", gradient_accumulation_steps=2)


@pytest.fixture(scope="module")
def fsdp_run(assets):
    """2 FSDP processes x 2 samples, checkpoint every step (keep 2), validation at step 2."""
    config = driver_config(
        assets,
        "fsdp",
        checkpointing_steps=1,
        checkpoints_total_limit=2,
        validation_data=[assets["val"]],
        validation_steps=2,
    )
    proc = launch(config, fsdp_processes(free_port()), assets["root"])
    return config, proc


def test_fsdp_gives_the_weights_of_one_process(one_process, fsdp_run):
    (one_dir, recorder), (config, proc) = one_process, fsdp_run
    out = config["output_dir"]
    assert "FSDP on 2 CPU processes (gloo)" in proc.stdout + proc.stderr  # not a silent fall-back to DDP
    ranks = read_ranks(out)
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["backend"] for r in ranks} == {"gloo"}
    assert [r["global_step"] for r in ranks] == [3, 3]
    for step in ("1", "2", "3"):  # the same samples per step as the 1-process run
        assert sorted(ranks[0]["indices"][step] + ranks[1]["indices"][step]) == sorted(recorder.indices[int(step)])
        assert ranks[0]["logs"][step]["t/loss"] == pytest.approx(recorder.logs[int(step)]["t/loss"], rel=1e-5)
    one, two = trainable_weights(one_dir), trainable_weights(out)
    start = trainable_weights(os.path.join(out, "checkpoint-2"))
    assert max_difference(one, start) > 5e-5  # the last step moved the weights: the equality is not vacuous
    difference = max_difference(one, two)
    print(f"FSDP vs 1 process: max weight difference {difference:.3g}")
    assert difference <= TOLERANCE


def test_checkpoints_sharded_saved_once_and_rotated(fsdp_run):
    config, proc = fsdp_run
    out = config["output_dir"]
    names = sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-3"]  # limit 2: checkpoint-1 rotated out, no partials
    folder = os.path.join(out, "checkpoint-3")
    files = set(os.listdir(folder))
    assert {"controlnet", "attnx", "text_embedding", "random_states_0.pkl", "random_states_1.pkl"} <= files
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):  # accelerate's sharded model / optimizer: one file a rank
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(os.listdir(os.path.join(folder, name)))
    with open(os.path.join(folder, "training_state.json"), encoding="utf-8") as f:
        assert json.load(f)["samples_seen"] == 12
    log = proc.stdout + proc.stderr
    assert len(re.findall(r"saved \S+checkpoint-\d \(checkpointing_steps\)", log)) == 3  # not one per process
    assert "failed" not in log
    # The component folders are the gathered full weights: at the last step, those of the final folder.
    assert max_difference(trainable_weights(folder), trainable_weights(out)) == 0.0


def test_validation_on_the_main_process(fsdp_run):
    config, proc = fsdp_run
    log = proc.stdout + proc.stderr
    assert log.count("validation at step 2:") == 1 and log.count("validation at step 3:") == 1
    assert sorted(os.listdir(os.path.join(config["output_dir"], "validation"))) == [
        "step-000002.png",
        "step-000003.png",
    ]


def test_output_folder_loads(fsdp_run):
    from anytext2_diffusers.pipelines import AnyText2Pipeline

    pipe = AnyText2Pipeline.from_pretrained(fsdp_run[0]["output_dir"])
    assert pipe.controlnet is not None and pipe.attnx is not None and pipe.text_embedding is not None


def test_resume_in_two_fsdp_processes(assets, fsdp_run):
    """checkpoint-2, resumed by 2 FSDP processes (sharded model and optimizer), reaches the straight run."""
    config, _ = fsdp_run
    resumed = str(assets["root"] / "resumed")
    os.makedirs(resumed)
    shutil.copytree(os.path.join(config["output_dir"], "checkpoint-2"), os.path.join(resumed, "checkpoint-2"))
    cfg = dict(config, output_dir=resumed, resume_from_checkpoint="latest", validation_data=[], validation_steps=None)
    launch(cfg, fsdp_processes(free_port()), assets["root"])
    ranks, straight = read_ranks(resumed), read_ranks(config["output_dir"])
    assert [list(r["indices"]) for r in ranks] == [["3"], ["3"]]
    assert [r["indices"]["3"] for r in ranks] == [r["indices"]["3"] for r in straight]
    assert max_difference(trainable_weights(resumed), trainable_weights(config["output_dir"])) == 0.0


# ------------------------------------------------------------------------------------------ no processes


def _fake_accelerator(**plugin):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    settings = {"fsdp_version": 2, "auto_wrap_policy": None, "cpu_ram_efficient_loading": False, **plugin}
    return SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(**settings))
    )


@pytest.mark.parametrize(
    "plugin, options, message",
    [
        (dict(fsdp_version=1), {}, "fsdp_version 1"),
        (dict(auto_wrap_policy=print), {}, "auto-wrap"),
        (dict(cpu_ram_efficient_loading=True), {}, "cpu_ram_efficient_loading"),
        ({}, dict(use_ema=True), "--use_ema"),
        ({}, dict(lora_rank=4), "--lora_rank"),
    ],
)
def test_unsupported_fsdp_setups_are_refused(plugin, options, message):
    from types import SimpleNamespace

    from anytext2_diffusers.training import distributed

    config = SimpleNamespace(**{"use_ema": False, "lora_rank": 0, **options})
    supported = SimpleNamespace(use_ema=False, lora_rank=0)
    distributed.check_fsdp_supported(_fake_accelerator(), supported)  # the supported set-up
    with pytest.raises(ValueError, match=re.escape(message)):
        distributed.check_fsdp_supported(_fake_accelerator(**plugin), config)


def test_gpu_and_cpu_configs_share_the_fsdp_settings():
    import yaml
    from _distributed_helpers import CONFIGS

    configs = {}
    for name in ("fsdp_8.yaml", "cpu_fsdp_2.yaml"):
        with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
            configs[name] = yaml.safe_load(f)
    gpu, cpu = configs["fsdp_8.yaml"], configs["cpu_fsdp_2.yaml"]
    assert gpu["distributed_type"] == cpu["distributed_type"] == "FSDP"
    assert gpu["fsdp_config"] == cpu["fsdp_config"]  # the CPU test covers what the GPU config runs
    assert gpu["fsdp_config"]["fsdp_version"] == 2 and gpu["fsdp_config"]["fsdp_auto_wrap_policy"] == "NO_WRAP"
    assert (gpu["num_processes"], cpu["num_processes"], cpu["use_cpu"]) == (8, 2, True)
