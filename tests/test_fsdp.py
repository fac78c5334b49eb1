"""FSDP2 with real ``torch.distributed`` (gloo, CPU, 127.0.0.1): what is particular to 2 processes launched with
``configs/accelerate/cpu_fsdp_2.yaml`` (``fsdp_version: 2``, the whole ``AnyText2TrainingModel`` one unit, sharded
state dicts). The tests every launch config passes (the weights of 1 process, checkpoints, validation on the main
process, the output folder, an exact resume) run in ``test_distributed.py`` on the same shared run.
"""

from __future__ import annotations

import os
import re

import pytest
from _distributed_helpers import max_difference
from _training_helpers import trainable_weights


def test_fsdp_is_really_used(launches):
    config, proc = launches.run("fsdp")
    assert "FSDP on 2 CPU processes (gloo)" in proc.stdout + proc.stderr  # not a silent fall-back to DDP
    assert "failed" not in proc.stdout + proc.stderr


def test_checkpoints_hold_one_model_and_optimizer_shard_per_process(launches):
    config, _ = launches.run("fsdp")
    folder = os.path.join(config["output_dir"], "checkpoint-3")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(folder))
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):  # accelerate's sharded model / optimizer: one file a rank
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(os.listdir(os.path.join(folder, name)))
    assert max_difference(trainable_weights(folder), trainable_weights(config["output_dir"])) == 0.0


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

    from anytext2_diffusers.training import TrainingConfig, distributed

    config = TrainingConfig(**options)
    distributed.check_fsdp_supported(_fake_accelerator(), TrainingConfig())  # the supported set-up
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
