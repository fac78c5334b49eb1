"""fp16/bf16 training: frozen weights in half precision, trainable ones in float32, every layer fed its own
dtype with and without autocast; a CPU fp16 run takes the GPU's autocast + GradScaler path."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import make_data, reset_accelerate, save_small_recognizer, tiny_config
from torch import nn

from anytext2_diffusers.data import Collator
from anytext2_diffusers.training import TrainingCallback, train
from anytext2_diffusers.training.components import build_training_model
from anytext2_diffusers.training.data import build_datasets
from anytext2_diffusers.training.precision import align_layer_inputs
from anytext2_diffusers.training.preflight import precision_error
from anytext2_diffusers.training.step import sample_generators

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return dict(
        root=root, ocr=save_small_recognizer(str(root / "ocr")), train=make_data(str(root / "train"), n=2, seed=0)
    )


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


def test_aligned_inputs_let_fp16_and_fp32_layers_meet_without_autocast():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).half(), nn.LayerNorm(4))
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError):
        model(x)  # what the fp16 demo crashed on (float input, half weight)
    align_layer_inputs(model)
    assert model(x).dtype == torch.float32
    assert model[1](x).dtype == torch.float16


# Switch sets whose trainable and frozen layers interleave in one component.
SWITCHES = {
    # WriteNet/AttnX/text embedding train; the font recognizer's CTC head is frozen; OCR losses through fp16
    "default": dict(loss_alpha=0.003, loss_beta=0.003),
    "decoder": dict(sd_locked=False),  # the UNet's up blocks train, its down blocks stay fp16
    "qkv": dict(unlock_qkv=True),
    "lora": dict(lora_rank=2, lora_components=["unet", "controlnet", "attnx"]),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_fp16_step_runs_with_and_without_autocast(assets, name):
    config = tiny_config(str(assets["root"] / "out"), assets["train"], assets["ocr"], mask_ratio=0.5, **SWITCHES[name])
    train_set, _ = build_datasets(config)
    model, groups, parts = build_training_model(config, dtype=torch.float16)
    for component in ("vae", "text_encoder", "ocr"):
        assert parts[component].dtype == torch.float16
    params = [p for group in groups.values() for _, p in group]
    assert params and all(p.dtype == torch.float32 for p in params)  # float32 masters
    batch = Collator(config.max_lines)([train_set[(0, i)] for i in range(2)])
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            out = model(batch, sample_generators(0, 0, batch.index))
        assert torch.isfinite(out.loss), (autocast, out.loss)
        out.loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads), autocast
        model.zero_grad(set_to_none=True)


class Seen(TrainingCallback):
    def __init__(self):
        self.logs = []

    def on_step_end(self, state, logs, batch_indices):
        self.logs.append(dict(logs))


def test_fp16_training_on_cpu_takes_the_autocast_and_grad_scaler_path(assets):
    config = tiny_config(
        str(assets["root"] / "run"), assets["train"], assets["ocr"], mixed_precision="fp16", max_train_steps=2
    )
    seen = Seen()
    calls = {"scale": 0}
    real_scale = torch.amp.GradScaler.scale

    def counting_scale(self, outputs):
        calls["scale"] += 1
        return real_scale(self, outputs)

    torch.amp.GradScaler.scale = counting_scale
    try:
        result = train(config, seen)
    finally:
        torch.amp.GradScaler.scale = real_scale
    assert result.global_step == 2 and result.nonfinite_total == 0
    assert calls["scale"] == 2  # accelerator.backward scaled both losses
    assert all(torch.isfinite(torch.tensor(log["t/loss"])) for log in seen.logs)


def test_impossible_precisions_are_named(monkeypatch):
    assert precision_error("fp16", gpu=False) is None  # CPU fp16 runs (test above)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert precision_error("fp16", gpu=False).startswith("--mixed_precision fp16 with DeepSpeed needs a GPU")
    assert precision_error("fp16", gpu=True) is None
    assert precision_error("bf16", gpu=False) is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "FSDP" in precision_error("fp16", gpu=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    assert "choose" in precision_error(None)
