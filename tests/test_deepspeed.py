"""DeepSpeed ZeRO stage 2 with real ``torch.distributed`` on CPU: ``configs/accelerate/deepspeed_zero2.yaml``
launched as 2 processes (``--num_processes 2 --mixed_precision no``; the file says 8 GPUs and fp16).

Without CUDA, DeepSpeed picks its CPU accelerator, whose communication backend is gloo unless Intel's
oneCCL bindings are installed; the trainer keeps ``cpu=False`` under DeepSpeed and names gloo (see
``distributed.accelerator_placement``). The trainable module's optimizer state and gradients are partitioned
over the 2 processes; the frozen VAE/CLIP/OCR stay outside the engine.

The tests every launch config passes (the weights of 1 process with the same micro-batches, measured bitwise
equal in float32; checkpoints; validation on the main process; an exact resume; a final folder that loads) run
in ``test_distributed.py`` on the shared ZeRO-2 run. Here: the engine really is DeepSpeed, the same gradient
norms, ``--max_grad_norm`` applied by the engine, DeepSpeed's own files inside our atomic, rotating folders,
and a bf16 run (the engine's
half-precision path; DeepSpeed refuses fp16 where ``torch.ops.mkldnn._is_mkldnn_fp16_supported()`` is
False, as here: "Type fp16 is not supported on your device.").
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("deepspeed")  # an optional extra ([deepspeed]), not a module of this package

import torch  # noqa: E402
from _distributed_helpers import (  # noqa: E402
    LAUNCH_ARGS,
    driver_config,
    free_port,
    launch,
    max_difference,
    read_ranks,
    train_one_process,
    zero2_args,
)
from _training_helpers import trainable_weights  # noqa: E402

from anytext2_diffusers.training import checkpointing as ckpt  # noqa: E402


def test_the_engine_is_zero2_with_the_same_gradient_norms(launches):
    (_, recorder), (config, _) = launches.one_process(), launches.run("deepspeed")
    ranks = read_ranks(config["output_dir"])
    assert [r["distributed_type"] for r in ranks] == ["DEEPSPEED", "DEEPSPEED"]  # not a silent DDP fallback
    ds = ranks[0]["deepspeed_config"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 4
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.0  # no --max_grad_norm: off
    for step in (1, 2, 3):  # the engine's gradient norm (a float) is logged, not NaN
        logged = ranks[0]["logs"][str(step)]
        assert logged["grad_norm"] == pytest.approx(recorder.logs[step]["grad_norm"], rel=1e-4)


def test_checkpoints_hold_the_engine_files(launches):
    config, _ = launches.run("deepspeed")
    folder = os.path.join(config["output_dir"], "checkpoint-3")
    files = set(os.listdir(folder))
    assert {"pytorch_model", "latest"} <= files
    assert "optimizer.bin" not in files  # DeepSpeed's optimizer state replaces accelerate's
    engine = set(os.listdir(os.path.join(folder, "pytorch_model")))
    assert engine == {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",  # one ZeRO partition per process
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    states = torch.load(os.path.join(folder, "pytorch_model", "mp_rank_00_model_states.pt"), weights_only=False)
    assert states["module"] and not any(k.startswith("unet.") for k in states["module"])  # frozen UNet left out
    assert states["frozen_param_fragments"] is None
    with open(os.path.join(folder, ckpt.STATE_FILE), encoding="utf-8") as f:
        assert json.load(f)["global_step"] == 3


def test_max_grad_norm_is_the_engine_clipping(launches):
    """--max_grad_norm 1.0 becomes DeepSpeed's gradient_clipping; step 2 (norm ~1.9e6 on this tiny stack) is
    clipped like 1 process's clip_grad_norm_. Compared after 2 steps: past a clipped step the tiny stack's
    near-constant GroupNorm groups amplify round-off (see test_distributed.py), and the engine's norm
    differs from torch's in the 6th digit."""
    config = driver_config(launches.assets, "zero2-clip", max_grad_norm=1.0, max_train_steps=2)
    launch(config, zero2_args(free_port()), launches.assets["root"])
    ranks = read_ranks(config["output_dir"])
    assert ranks[0]["deepspeed_config"]["gradient_clipping"] == 1.0
    one_dir, recorder = train_one_process(
        launches.assets, "one-clip", gradient_accumulation_steps=2, max_grad_norm=1.0, max_train_steps=2
    )
    assert ranks[0]["logs"]["2"]["grad_norm"] == pytest.approx(recorder.logs[2]["grad_norm"], rel=1e-4)
    assert ranks[0]["logs"]["2"]["grad_norm"] > 1.0  # the clip was active
    clipped = trainable_weights(config["output_dir"])
    assert max_difference(clipped, trainable_weights(one_dir)) <= 1e-6  # measured: 1.5e-8
    unclipped = trainable_weights(os.path.join(launches.run("deepspeed")[0]["output_dir"], "checkpoint-2"))
    assert max_difference(clipped, unclipped) > 5e-5  # measured: 1.4e-4


def test_gradient_accumulation_matches_ddp(launches):
    """--gradient_accumulation_steps 2 fills DeepSpeed's ``auto`` value; 1 step of 2 processes x 1 sample x 2
    micro-steps equals DDP's (cpu_ddp_2.yaml) with the same micro-batches. One step only: DeepSpeed reduces
    each micro-step's gradients (DDP the accumulated sum), and past step 1 the tiny stack amplifies that
    round-off (measured after 3 steps: 3e-4, with equal losses)."""
    settings = dict(train_batch_size=1, gradient_accumulation_steps=2, max_train_steps=1)
    ds_config = driver_config(launches.assets, "zero2-accumulation", **settings)
    ddp_config = driver_config(launches.assets, "ddp-accumulation", **settings)
    launch(ds_config, zero2_args(free_port()), launches.assets["root"])
    launch(ddp_config, LAUNCH_ARGS["ddp"](free_port()), launches.assets["root"])
    ds_ranks, ddp_ranks = read_ranks(ds_config["output_dir"]), read_ranks(ddp_config["output_dir"])
    assert ds_ranks[0]["deepspeed_config"]["gradient_accumulation_steps"] == 2
    assert ds_ranks[0]["deepspeed_config"]["train_batch_size"] == 4
    assert [r["indices"] for r in ds_ranks] == [r["indices"] for r in ddp_ranks]
    assert ds_ranks[0]["logs"]["1"]["grad_norm"] == pytest.approx(ddp_ranks[0]["logs"]["1"]["grad_norm"], rel=1e-5)
    ds, ddp = trainable_weights(ds_config["output_dir"]), trainable_weights(ddp_config["output_dir"])
    assert max_difference(ds, ddp) <= 1e-6  # measured: 3.5e-8


def parameter_names(folder: str) -> set[str]:
    """``component.parameter`` names of the trainable components saved in ``folder`` (no buffers)."""
    import anytext2_diffusers as package

    names = set()
    for component, cls in (
        ("controlnet", "AnyText2ControlNetModel"),
        ("attnx", "AnyText2AttnXModel"),
        ("text_embedding", "AnyText2TextEmbeddingModel"),
    ):
        model = getattr(package, cls).from_pretrained(os.path.join(folder, component))
        names |= {f"{component}.{name}" for name, _ in model.named_parameters()}
    return names


def test_bf16_saves_the_float32_masters(launches):
    """The engine's half-precision path (what fp16 does on GPUs): parameters cast to bf16, float32 masters
    in the ZeRO partitions. The component folders of checkpoints and the final folder hold the masters, as
    DeepSpeed's own ``zero_to_fp32`` assembles them from the checkpoint, not the bf16 copies."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    config = driver_config(
        launches.assets,
        "zero2-bf16",
        mixed_precision="bf16",
        validation_data=[launches.assets["val"]],
        validation_steps=2,
        checkpointing_steps=3,
    )
    proc = launch(config, zero2_args(free_port(), "bf16"), launches.assets["root"])
    assert [r["global_step"] for r in read_ranks(config["output_dir"])] == [3, 3]
    assert "validation at step 2:" in proc.stdout + proc.stderr
    final = trainable_weights(config["output_dir"])
    checkpoint = os.path.join(config["output_dir"], "checkpoint-3")
    masters = get_fp32_state_dict_from_zero_checkpoint(checkpoint, exclude_frozen_parameters=True)
    # parameters only (zero_to_fp32 passes the module's buffers through)
    parameters = parameter_names(config["output_dir"])
    compared = [key for key in masters if key in final and key in parameters]
    assert len(compared) > 100
    for key in compared:
        assert final[key].dtype == torch.float32 and torch.equal(final[key], masters[key]), key
    assert max_difference(trainable_weights(checkpoint), final) == 0.0
    rounded = [torch.equal(final[k].bfloat16().float(), final[k]) for k in compared]
    assert not all(rounded)  # not the bf16 copies
    assert (
        max_difference(final, trainable_weights(launches.run("deepspeed")[0]["output_dir"])) <= 5e-3
    )  # vs float32 training


def test_bf16_lora_checkpoints_hold_the_float32_masters(launches):
    """LoRA under DeepSpeed bf16: the checkpoint's adapter folders (adapter weights and the fully trained
    non-adapter parameters, e.g. WriteNet's zero convolutions) are the float32 masters, and the final folder
    loads."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from anytext2_diffusers.training import lora

    config = driver_config(
        launches.assets,
        "zero2-bf16-lora",
        mixed_precision="bf16",
        lora_rank=4,
        lora_alpha=8,
        lora_components=["unet", "controlnet", "attnx"],
        max_train_steps=2,
        checkpointing_steps=2,
    )
    launch(config, zero2_args(free_port(), "bf16"), launches.assets["root"])
    checkpoint = os.path.join(config["output_dir"], "checkpoint-2")
    masters = get_fp32_state_dict_from_zero_checkpoint(checkpoint, exclude_frozen_parameters=True)
    compared = 0
    for component in ("unet", "controlnet", "attnx"):
        folder = os.path.join(checkpoint, f"{component}_lora")
        saved = load_file(os.path.join(folder, lora.ADAPTER_WEIGHTS))
        base = os.path.join(folder, lora.BASE_WEIGHTS)
        trained_base = load_file(base) if os.path.isfile(base) else {}
        for key, value in saved.items():  # peft drops the adapter name from the key
            name = key.replace(".lora_A.", f".lora_A.{lora.ADAPTER_NAME}.").replace(
                ".lora_B.", f".lora_B.{lora.ADAPTER_NAME}."
            )
            assert value.dtype == torch.float32 and torch.equal(value, masters[f"{component}.{name}"]), key
            compared += 1
        for key, value in trained_base.items():
            assert value.dtype == torch.float32 and torch.equal(value, masters[f"{component}.{key}"]), key
            compared += 1
    assert compared > 50
    assert os.path.isfile(os.path.join(config["output_dir"], "pytorch_lora_weights.safetensors"))


def test_a_non_finite_loss_leaves_the_weights_unchanged(launches):
    """A NaN loss in step 2 (0-based 1): the engine, which steps inside backward, steps with learning rate 0,
    so the weights after step 2 are exactly those after step 1, as DDP's skipped update leaves them; the step
    is counted and training goes on."""
    config = driver_config(
        launches.assets, "zero2-nan", nan_at_steps=[1], checkpointing_steps=1, checkpoints_total_limit=3
    )
    proc = launch(config, zero2_args(free_port()), launches.assets["root"])
    out = config["output_dir"]
    assert [r["global_step"] for r in read_ranks(out)] == [3, 3]
    assert "step 2: non-finite loss or gradient, update skipped" in proc.stdout + proc.stderr
    first, second, third = (trainable_weights(os.path.join(out, f"checkpoint-{s}")) for s in (1, 2, 3))
    assert max_difference(first, second) == 0.0
    assert max_difference(second, third) > 1e-6  # the next step trains again
    assert ckpt.TrainingState.load(os.path.join(out, "checkpoint-3")).nonfinite_total == 1
