"""LoRA training on the tiny stack (CPU): what trains, exact resume, the final folder's adapters reproduce the
trained model, merged output, option errors."""

from __future__ import annotations

import copy
import errno
import json
import os
from unittest import mock

import pytest
import safetensors.torch
import torch
from _training_helpers import make_data, reset_accelerate, save_small_recognizer, tiny_config
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file

from anytext2_diffusers.models.attnx import AnyText2AttnXModel
from anytext2_diffusers.models.controlnet import AnyText2ControlNetModel
from anytext2_diffusers.pipelines import AnyText2Pipeline
from anytext2_diffusers.testing import quick_generate, tiny_components
from anytext2_diffusers.training import TrainingCallback, TrainingConfig, lora, train
from anytext2_diffusers.training import checkpointing as ckpt
from anytext2_diffusers.training.output import FinalSaveError
from anytext2_diffusers.training.trainable import apply_trainable

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = ("unet", "controlnet", "attnx", "text_embedding")
LORA = dict(lora_rank=4, lora_alpha=8, lora_components=["unet", "controlnet", "attnx"], learning_rate=5e-3)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_assets")
    return dict(
        root=root, ocr=save_small_recognizer(str(root / "ocr")), train=make_data(str(root / "train"), n=4, seed=0)
    )


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


class Snapshot(TrainingCallback):
    """The trained weights and the in-memory pipeline's output, taken before the final folder is written.

    Outputs are compared in float64: in float32, two pipelines with bitwise-equal weights built differently
    (in memory vs loaded) already differ by ~1e-5 after CFG, which would hide nothing and prove nothing."""

    def __init__(self):
        self.weights, self.latents = {}, None

    def on_train_end(self, parts):
        self.weights = {n: {k: v.detach().clone() for k, v in parts[n].state_dict().items()} for n in COMPONENTS}
        parts["attnx"].detach()  # the copy gets its own hooks on the copied UNet
        try:
            copies = copy.deepcopy(parts)
        finally:
            parts["attnx"].attach(parts["unet"])
        self.latents = quick_generate(float64_pipeline(AnyText2Pipeline.from_parts(copies)))


def float64_pipeline(pipe):
    pipe.to(torch.float64)
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            model.eval()
    return pipe


def train_recording_start(config, callback):
    """``train`` that also returns the weights right after the adapters were added (before any step)."""
    start = {}
    real = lora.add_adapters

    def add_and_record(components, cfg):
        real(components, cfg)
        start.update({n: {k: v.detach().clone() for k, v in components[n].state_dict().items()} for n in COMPONENTS})

    with mock.patch.object(lora, "add_adapters", add_and_record):
        result = train(config, callback)
    return result, start


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k: v for k, v in before.items() if not torch.equal(v, after[k])}.keys()


def read_checkpoint(folder: str) -> dict[str, torch.Tensor]:
    """Every trainable tensor a checkpoint holds: adapters, fully trained parts, the text embedding."""
    out = {}
    for name in ("unet", "controlnet", "attnx"):
        for file in (lora.ADAPTER_WEIGHTS, lora.BASE_WEIGHTS):
            path = os.path.join(folder, f"{name}_lora", file)
            if os.path.isfile(path):
                out.update({f"{name}/{file}/{k}": v for k, v in load_file(path).items()})
    path = os.path.join(folder, "text_embedding", "diffusion_pytorch_model.safetensors")
    out.update({f"text_embedding/{k}": v for k, v in load_file(path).items()})
    return out


# ------------------------------------------------------------------------------------------------
# one 6-step LoRA run on UNet + WriteNet + AttnX (full text embedding), checkpoints at 3 and 6
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(assets):
    out = str(assets["root"] / "straight")
    config = tiny_config(out, assets["train"], assets["ocr"], max_train_steps=6, checkpointing_steps=3, **LORA)
    snapshot = Snapshot()
    result, start = train_recording_start(config, snapshot)
    reset_accelerate()
    assert result.global_step == 6
    return config, start, snapshot


def test_only_adapters_and_chosen_full_parameters_change(lora_run):
    _, start, snap = lora_run
    full_writenet = tuple(p + "." for p in lora.WRITENET_FULL)

    unet = changed(start["unet"], snap.weights["unet"])
    assert unet and all(lora.is_lora_param(k) for k in unet), sorted(k for k in unet if not lora.is_lora_param(k))
    assert {k for k in start["unet"] if ".lora_B." in k} <= unet  # every UNet adapter learned something

    attnx = changed(start["attnx"], snap.weights["attnx"])
    assert attnx and all(lora.is_lora_param(k) for k in attnx)

    writenet = changed(start["controlnet"], snap.weights["controlnet"])
    assert all(lora.is_lora_param(k) or k.startswith(full_writenet) for k in writenet)
    assert any(k.startswith("controlnet_mid_block.") for k in writenet)  # the zero convs train in full
    assert any(lora.is_lora_param(k) for k in writenet)
    assert not any(lora.is_lora_param(k) for k in start["controlnet"] if k.startswith(full_writenet))
    frozen = [k for k in start["controlnet"] if ".base_layer." in k or k.startswith(("conv_in.", "time_embedding."))]
    assert frozen and not set(frozen) & set(writenet)

    assert changed(start["text_embedding"], snap.weights["text_embedding"])  # full training, as without LoRA


def test_final_folder_holds_base_components_and_adapter_files(lora_run):
    config, start, snap = lora_run
    out = config.output_dir
    stock_unet = tiny_components(0)["unet"].state_dict()
    saved_unet = load_file(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))
    assert saved_unet.keys() == stock_unet.keys()  # stock keys: the BASE UNet, no adapter or AttnX key
    base = {k.replace(".base_layer.", "."): v for k, v in start["unet"].items() if not lora.is_lora_param(k)}
    assert all(torch.equal(saved_unet[k], base[k]) for k in saved_unet)  # untouched by training
    saved_writenet = load_file(os.path.join(out, "controlnet", "diffusion_pytorch_model.safetensors"))
    trained = {k.replace(".base_layer.", "."): v for k, v in snap.weights["controlnet"].items()}
    assert all(torch.equal(v, trained[k]) for k, v in saved_writenet.items())  # with the fully trained parts
    unet_lora = load_file(os.path.join(out, lora.UNET_LORA_WEIGHTS))
    assert unet_lora and all(k.startswith("unet.") and ".lora." in k for k in unet_lora)  # diffusers format
    for name in ("controlnet", "attnx"):  # save_lora_adapter's file: peft keys, the LoraConfig in its metadata
        with safe_open(os.path.join(out, f"{name}_lora", lora.ADAPTER_WEIGHTS), "pt") as f:
            assert json.loads(f.metadata()[LORA_ADAPTER_METADATA_KEY])["r"] == 4
            assert f.keys() and all(".lora_A." in k or ".lora_B." in k for k in f.keys())
    size, total = sum(v.numel() for v in unet_lora.values()), sum(v.numel() for v in stock_unet.values())
    print(f"UNet LoRA file: {len(unet_lora)} tensors, {size:,} parameters (UNet: {total:,})")


def test_saved_adapters_reproduce_the_trained_model(lora_run):
    config, _, snap = lora_run
    pipe = AnyText2Pipeline.from_pretrained(config.output_dir)
    base = quick_generate(float64_pipeline(pipe))
    assert lora.load_lora_adapters(pipe, config.output_dir) == ["unet", "controlnet", "attnx"]
    assert pipe.unet.peft_config[lora.ADAPTER_NAME].lora_alpha == 8  # alpha != rank survives the file
    assert pipe.attnx.attached_unet is pipe.unet
    adapted = quick_generate(float64_pipeline(pipe))
    diff = (adapted - snap.latents).abs().max().item()
    print(
        f"LoRA output folder vs in-training model: max |diff| = {diff:.2e}; adapters change it by "
        f"{(adapted - base).abs().max().item():.2e}"
    )
    assert diff <= 1e-5
    assert (adapted - base).abs().max() > 1e-3  # the adapters matter, so the comparison means something
    pipe.set_adapters([lora.ADAPTER_NAME], adapter_weights=[0.0])  # the UNet adapter alone matters too
    assert (quick_generate(pipe) - adapted).abs().max() > 1e-4


def test_resume_is_exact(lora_run, assets):
    config, _, _ = lora_run

    class Kill(TrainingCallback):
        def on_step_end(self, state, logs, batch_indices):
            if state.global_step == 4:
                raise SystemExit("killed")

    out = str(assets["root"] / "resumed")
    common = dict(max_train_steps=6, checkpointing_steps=3, **LORA)
    with pytest.raises(SystemExit):
        train(tiny_config(out, assets["train"], assets["ocr"], **common), Kill())
    reset_accelerate()
    step3 = read_checkpoint(os.path.join(out, "checkpoint-3"))
    assert not os.path.isdir(os.path.join(out, "checkpoint-3", "unet"))  # adapters only, not the whole UNet
    train(tiny_config(out, assets["train"], assets["ocr"], resume_from_checkpoint="latest", **common))
    straight = read_checkpoint(os.path.join(config.output_dir, "checkpoint-6"))
    resumed = read_checkpoint(os.path.join(out, "checkpoint-6"))
    assert straight.keys() == resumed.keys() and any("lora_B" in k for k in straight)
    diff = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
    print(f"LoRA resume: max |straight - resumed| over {len(straight)} trainable tensors = {diff:.3e}")
    assert diff <= 1e-6
    assert max((straight[k] - step3[k]).abs().max().item() for k in straight) > 1e-4  # steps 4-6 moved them


def test_merge_lora_at_end_with_full_decoder_training(assets):
    """UNet + AttnX adapters mixed with full training of the UNet decoder; the folder holds merged weights."""
    out = str(assets["root"] / "merged")
    config = tiny_config(
        out,
        assets["train"],
        assets["ocr"],
        max_train_steps=3,
        sd_locked=False,
        merge_lora_at_end=True,
        **dict(LORA, lora_components=["unet", "attnx"]),
    )
    snap = Snapshot()
    _, start = train_recording_start(config, snap)
    unet = changed(start["unet"], snap.weights["unet"])
    full = {k for k in unet if not lora.is_lora_param(k)}
    assert full and all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for k in full)
    assert not any(".base_layer." in k for k in unet)  # adapted layers keep their base weight
    assert not os.path.exists(os.path.join(out, lora.UNET_LORA_WEIGHTS))
    assert not any(os.path.exists(os.path.join(out, f"{n}_lora")) for n in lora.LORA_COMPONENTS)
    pipe = AnyText2Pipeline.from_pretrained(out)
    assert pipe.unet.state_dict().keys() == tiny_components(0)["unet"].state_dict().keys()
    diff = (quick_generate(float64_pipeline(pipe)) - snap.latents).abs().max().item()
    print(f"merged LoRA folder vs in-training model: max |diff| = {diff:.2e}")
    assert diff <= 1e-5


class Weights(TrainingCallback):
    """The weights when training ends (before the final folder), and the components themselves."""

    def on_train_end(self, parts):
        self.parts = parts
        self.weights = {n: {k: v.detach().clone() for k, v in parts[n].state_dict().items()} for n in COMPONENTS}


def test_a_failed_merged_final_save_leaves_a_fallback_checkpoint_of_the_trained_adapters(lora_run, assets):
    """``--merge_lora_at_end`` fuses the adapters in place. When the final folder cannot be written (a full disk
    from its first file on), the adapters are unfused before the fallback checkpoint is written: it holds the
    adapters and fully trained parameters of the straight run's checkpoint-6 (not merged whole components), and
    resuming from it gives back exactly the weights training ended with."""
    config, _, _ = lora_run
    out = str(assets["root"] / "merge_fails")
    common = dict(max_train_steps=6, checkpointing_steps=4, merge_lora_at_end=True, **LORA)  # none at step 6
    real = lora.save_pipeline_folder

    def full_disk(parts, output_dir, **kwargs):
        def save_file(tensors, filename, metadata=None):
            raise OSError(errno.ENOSPC, "No space left on device")

        with mock.patch.object(safetensors.torch, "save_file", save_file):
            return real(parts, output_dir, **kwargs)

    failed = Weights()
    with mock.patch.object(lora, "save_pipeline_folder", full_disk):
        with pytest.raises(FinalSaveError, match="No space left on device.*checkpoint-6"):
            train(tiny_config(out, assets["train"], assets["ocr"], **common), failed)
    reset_accelerate()

    for name in ("unet", "controlnet", "attnx"):  # in memory: the adapters back in place, unmerged
        model = failed.parts[name]
        assert lora.has_adapter(model) and not any(
            m.merged for m in model.modules() if isinstance(m, BaseTunerLayer)
        ), name
    fallback = os.path.join(out, "checkpoint-6")
    assert ckpt.is_complete(fallback) and "model_index.json" not in os.listdir(out)
    assert not any(os.path.isdir(os.path.join(fallback, n)) for n in ("unet", "controlnet", "attnx"))
    kept, straight = read_checkpoint(fallback), read_checkpoint(os.path.join(config.output_dir, "checkpoint-6"))
    assert kept.keys() == straight.keys() and any("lora_B" in k for k in kept)
    diff = max((kept[k] - straight[k]).abs().max().item() for k in kept)
    print(f"fallback checkpoint vs the straight run's checkpoint-6: max |diff| over {len(kept)} tensors = {diff:.1e}")
    assert diff <= 1e-6  # the same steps in the same process: measured 0, as in test_resume_is_exact

    resumed = Weights()  # no steps left: load the fallback checkpoint, then the merged save (it succeeds now)
    train(tiny_config(out, assets["train"], assets["ocr"], resume_from_checkpoint="latest", **common), resumed)
    for name in COMPONENTS:
        before, after = failed.weights[name], resumed.weights[name]
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name  # base weights included
    assert "model_index.json" in os.listdir(out)
    assert not os.path.exists(os.path.join(out, lora.UNET_LORA_WEIGHTS))  # merged: no adapter files


# Leaf convs of WriteNet's fully trained parts, named exactly: without the exclusion they would get adapters.
ZERO_AND_ENCODER_CONVS = [
    "fuse_block",
    "controlnet_mid_block",
    "controlnet_down_blocks.0",
    "glyph_block.0",
    "position_block.0",
]


def test_writenet_adapters_skip_its_zero_convs_and_encoders():
    config = TrainingConfig(
        tiny_model=True,
        lora_rank=2,
        lora_components=["controlnet"],
        lora_target_modules=["to_q", *ZERO_AND_ENCODER_CONVS],
    )
    parts = tiny_components(0)
    parts = dict(
        unet=parts["unet"],
        controlnet=AnyText2ControlNetModel.from_unet(parts["unet"]),
        attnx=AnyText2AttnXModel.from_unet(parts["unet"]),
    )
    lora.add_adapters(parts, config)
    groups = apply_trainable(parts, config)
    names = [n for n, _ in groups["controlnet"]]
    for prefix in lora.WRITENET_FULL:
        assert any(n.startswith(prefix + ".") for n in names), prefix
        assert not any(n.startswith(prefix + ".") and lora.is_lora_param(n) for n in names), prefix
    assert not any(".base_layer." in n for n in names)
    assert any(".to_q.lora_A." in n for n in names)
    assert "unet" not in groups and [n for n, _ in groups["attnx"]]  # AttnX trains in full, the UNet not at all


def test_option_errors(tmp_path):
    with pytest.raises(ValueError, match="unlock_qkv"):
        TrainingConfig(lora_rank=4, unlock_qkv=True)
    TrainingConfig(lora_rank=4, unlock_qkv=True, lora_components=["attnx"])  # full q/k/v + AttnX LoRA is fine
    with pytest.raises(ValueError, match="needs --lora_rank"):
        TrainingConfig(merge_lora_at_end=True)
    with pytest.raises(ValueError, match="lora_components"):
        TrainingConfig(lora_rank=4, lora_components=["vae"])
    parts = {"attnx": AnyText2AttnXModel.from_unet(tiny_components(0)["unet"])}
    with pytest.raises(ValueError, match="lora_target_modules"):
        lora.add_adapters(parts, TrainingConfig(lora_rank=4, lora_components=["attnx"], lora_target_modules=["nope"]))


def test_resume_with_other_lora_switches_is_refused(lora_run, assets):
    config, _, _ = lora_run
    other = tiny_config(
        str(assets["root"] / "refused"),
        assets["train"],
        assets["ocr"],
        max_train_steps=7,
        resume_from_checkpoint=os.path.join(config.output_dir, "checkpoint-6"),
        **dict(LORA, lora_components=["unet"]),
    )
    assert ckpt.is_complete(other.resume_from_checkpoint)
    with pytest.raises(ValueError, match="lora"):
        train(other)
