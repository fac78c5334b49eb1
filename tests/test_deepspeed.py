"""DeepSpeed ZeRO stage 2 with real ``torch.distributed`` on CPU: ``configs/accelerate/deepspeed_zero2.yaml``
launched as 2 processes (``--num_processes 2 --mixed_precision no``; the file says 8 GPUs and fp16).

Without CUDA, DeepSpeed picks its CPU accelerator, whose communication backend is gloo unless Intel's
oneCCL bindings are installed; the trainer keeps ``cpu=False`` under DeepSpeed and names gloo (see
``loop._accelerator_placement``). The trainable module's optimizer state and gradients are partitioned
over the 2 processes; the frozen VAE/CLIP/OCR stay outside the engine.

What is proven, against 1 process with the same micro-batches (2 samples x 2 accumulation steps, as in
test_distributed.py): the same weights after 3 steps in float32 (measured: bitwise equal), the same
gradient norms, ``--max_grad_norm`` applied by the engine, checkpoints with DeepSpeed's own files inside
our atomic, rotating folders, an exact resume, a final folder that loads, and a bf16 run (the engine's
half-precision path; DeepSpeed refuses fp16 where ``torch.ops.mkldnn._is_mkldnn_fp16_supported()`` is
False, as here: "Type fp16 is not supported on your device.").
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("deepspeed")

import torch  # noqa: E402
from _distributed_helpers import (  # noqa: E402
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
from test_distributed import two_processes  # noqa: E402

from anytext2_diffusers.training import checkpointing as ckpt  # noqa: E402


def zero2(port: int, mixed_precision: str = "no") -> list[str]:
    """configs/accelerate/deepspeed_zero2.yaml as 2 CPU processes on a free port."""
    return [*launcher_args("deepspeed_zero2.yaml", port), "--num_processes", "2", "--mixed_precision", mixed_precision]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory, "deepspeed")


@pytest.fixture(scope="module")
def one_process(assets):
    """The reference: 1 process, 2 samples x 2 accumulation steps = the 2 processes' global batch of 4."""
    return train_one_process(assets, "one", gradient_accumulation_steps=2)


@pytest.fixture(scope="module")
def zero2_run(assets):
    """2 processes x 2 samples under ZeRO-2, float32; checkpoint every step (keep 2), validation at step 2."""
    config = driver_config(
        assets,
        "zero2",
        checkpointing_steps=1,
        checkpoints_total_limit=2,
        validation_data=[assets["val"]],
        validation_steps=2,
    )
    proc = launch(config, zero2(free_port()), assets["root"])
    return config, proc


def test_zero2_gives_the_weights_of_one_process(one_process, zero2_run):
    (one_dir, recorder), (config, _) = one_process, zero2_run
    ranks = read_ranks(config["output_dir"])
    assert [r["distributed_type"] for r in ranks] == ["DEEPSPEED", "DEEPSPEED"]  # not a silent DDP fallback
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["backend"] for r in ranks} == {"gloo"}
    ds = ranks[0]["deepspeed_config"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 4
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.0  # no --max_grad_norm: off
    assert [r["global_step"] for r in ranks] == [3, 3]
    one, two = trainable_weights(one_dir), trainable_weights(config["output_dir"])
    start = trainable_weights(os.path.join(config["output_dir"], "checkpoint-2"))
    assert max_difference(one, start) > 5e-5  # the last step moved the weights: the equality is not vacuous
    assert max_difference(one, two) <= 1e-6  # measured: 0.0
    for step in (1, 2, 3):  # the engine's gradient norm (a float) is logged, not NaN
        logged = ranks[0]["logs"][str(step)]
        assert logged["grad_norm"] == pytest.approx(recorder.logs[step]["grad_norm"], rel=1e-4)
        assert logged["t/loss"] == pytest.approx(recorder.logs[step]["t/loss"], rel=1e-6)


def test_checkpoints_hold_the_engine_files_and_rotate(zero2_run):
    config, proc = zero2_run
    out = config["output_dir"]
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    folder = os.path.join(out, "checkpoint-3")
    files = set(os.listdir(folder))
    assert {"controlnet", "attnx", "text_embedding", "pytorch_model", "latest", ckpt.MARKER, ckpt.STATE_FILE} <= files
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
    log = proc.stdout + proc.stderr
    assert log.count("saved ") >= 3 and log.count("validation at step 2:") == 1


def test_resume_is_exact(assets, zero2_run):
    """checkpoint-2, resumed by 2 ZeRO-2 processes: the straight run's step-3 weights (AdamW moments included)."""
    config, _ = zero2_run
    resumed = str(assets["root"] / "resumed")
    os.makedirs(resumed)
    shutil.copytree(os.path.join(config["output_dir"], "checkpoint-2"), os.path.join(resumed, "checkpoint-2"))
    cfg = dict(config, output_dir=resumed, resume_from_checkpoint="latest", validation_data=[], validation_steps=None)
    launch(cfg, zero2(free_port()), assets["root"])
    ranks, straight = read_ranks(resumed), read_ranks(config["output_dir"])
    assert [list(r["indices"]) for r in ranks] == [["3"], ["3"]]
    assert [r["indices"]["3"] for r in ranks] == [r["indices"]["3"] for r in straight]
    assert max_difference(trainable_weights(resumed), trainable_weights(config["output_dir"])) == 0.0


def test_final_folder_loads(zero2_run):
    from anytext2_diffusers.pipelines import AnyText2Pipeline

    config, _ = zero2_run
    pipe = AnyText2Pipeline.from_pretrained(config["output_dir"])
    assert pipe.controlnet is not None and pipe.text_embedding is not None
    final = trainable_weights(config["output_dir"])
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_max_grad_norm_is_the_engine_clipping(assets, zero2_run):
    """--max_grad_norm 1.0 becomes DeepSpeed's gradient_clipping; step 2 (norm ~1.9e6 on this tiny stack) is
    clipped like 1 process's clip_grad_norm_. Compared after 2 steps: past a clipped step the tiny stack's
    near-constant GroupNorm groups amplify round-off (see test_distributed.py), and the engine's norm
    differs from torch's in the 6th digit."""
    config = driver_config(assets, "zero2-clip", max_grad_norm=1.0, max_train_steps=2)
    launch(config, zero2(free_port()), assets["root"])
    ranks = read_ranks(config["output_dir"])
    assert ranks[0]["deepspeed_config"]["gradient_clipping"] == 1.0
    one_dir, recorder = train_one_process(
        assets, "one-clip", gradient_accumulation_steps=2, max_grad_norm=1.0, max_train_steps=2
    )
    assert ranks[0]["logs"]["2"]["grad_norm"] == pytest.approx(recorder.logs[2]["grad_norm"], rel=1e-4)
    assert ranks[0]["logs"]["2"]["grad_norm"] > 1.0  # the clip was active
    clipped = trainable_weights(config["output_dir"])
    assert max_difference(clipped, trainable_weights(one_dir)) <= 1e-6  # measured: 1.5e-8
    unclipped = trainable_weights(os.path.join(zero2_run[0]["output_dir"], "checkpoint-2"))
    assert max_difference(clipped, unclipped) > 5e-5  # measured: 1.4e-4


def test_gradient_accumulation_matches_ddp(assets):
    """--gradient_accumulation_steps 2 fills DeepSpeed's ``auto`` value; 1 step of 2 processes x 1 sample x 2
    micro-steps equals DDP's (cpu_ddp_2.yaml) with the same micro-batches. One step only: DeepSpeed reduces
    each micro-step's gradients (DDP the accumulated sum), and past step 1 the tiny stack amplifies that
    round-off (measured after 3 steps: 3e-4, with equal losses)."""
    settings = dict(train_batch_size=1, gradient_accumulation_steps=2, max_train_steps=1)
    ds_config = driver_config(assets, "zero2-accumulation", **settings)
    ddp_config = driver_config(assets, "ddp-accumulation", **settings)
    launch(ds_config, zero2(free_port()), assets["root"])
    launch(ddp_config, two_processes(free_port()), assets["root"])
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


def test_bf16_saves_the_float32_masters(assets, zero2_run):
    """The engine's half-precision path (what fp16 does on GPUs): parameters cast to bf16, float32 masters
    in the ZeRO partitions. The component folders of checkpoints and the final folder hold the masters, as
    DeepSpeed's own ``zero_to_fp32`` assembles them from the checkpoint, not the bf16 copies."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    config = driver_config(
        assets,
        "zero2-bf16",
        mixed_precision="bf16",
        validation_data=[assets["val"]],
        validation_steps=2,
        checkpointing_steps=3,
    )
    proc = launch(config, zero2(free_port(), "bf16"), assets["root"])
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
    assert max_difference(final, trainable_weights(zero2_run[0]["output_dir"])) <= 5e-3  # vs float32 training


def test_bf16_lora_checkpoints_hold_the_float32_masters(assets):
    """LoRA under DeepSpeed bf16: the checkpoint's adapter folders (adapter weights and the fully trained
    non-adapter parameters, e.g. WriteNet's zero convolutions) are the float32 masters, and the final folder
    loads."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from anytext2_diffusers.training import lora

    config = driver_config(
        assets,
        "zero2-bf16-lora",
        mixed_precision="bf16",
        lora_rank=4,
        lora_alpha=8,
        lora_components=["unet", "controlnet", "attnx"],
        max_train_steps=2,
        checkpointing_steps=2,
    )
    launch(config, zero2(free_port(), "bf16"), assets["root"])
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


def test_a_non_finite_loss_leaves_the_weights_unchanged(assets):
    """A NaN loss in step 2 (0-based 1): the engine, which steps inside backward, steps with learning rate 0,
    so the weights after step 2 are exactly those after step 1, as DDP's skipped update leaves them; the step
    is counted and training goes on."""
    config = driver_config(assets, "zero2-nan", nan_at_steps=[1], checkpointing_steps=1, checkpoints_total_limit=3)
    proc = launch(config, zero2(free_port()), assets["root"])
    out = config["output_dir"]
    assert [r["global_step"] for r in read_ranks(out)] == [3, 3]
    assert "step 2: non-finite loss or gradient, update skipped" in proc.stdout + proc.stderr
    first, second, third = (trainable_weights(os.path.join(out, f"checkpoint-{s}")) for s in (1, 2, 3))
    assert max_difference(first, second) == 0.0
    assert max_difference(second, third) > 1e-6  # the next step trains again
    assert ckpt.TrainingState.load(os.path.join(out, "checkpoint-3")).nonfinite_total == 1
