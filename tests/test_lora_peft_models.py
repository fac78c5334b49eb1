"""WriteNet and AttnX are diffusers ``PeftAdapterMixin`` models: ``add_adapter`` -> a training step ->
``save_lora_adapter`` -> ``load_lora_adapter`` on a fresh model gives the trained outputs exactly; the
adapter folders of earlier releases (peft's ``adapter_config.json`` + ``adapter_model.safetensors``) still
load through ``load_lora_adapters``."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch
from diffusers.loaders import PeftAdapterMixin
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from anytext2_diffusers.models.attnx import AnyText2AttnXModel
from anytext2_diffusers.models.controlnet import AnyText2ControlNetModel
from anytext2_diffusers.testing import tiny_components
from anytext2_diffusers.training import TrainingConfig, lora
from anytext2_diffusers.utils.dtype import cast_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs():
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    masked = torch.randn(2, 4, 16, 16, generator=g)
    glyphs, positions = torch.zeros(2, 1, 128, 128), torch.zeros(2, 1, 128, 128)
    glyphs[:, :, 20:40, 10:100], positions[:, :, 15:45, 5:105] = 1.0, 1.0
    return dict(x=x, t=torch.tensor([10, 700]), context=context, glyphs=glyphs, positions=positions, masked=masked)


class Case:
    """One component on a fixed tiny UNet: how to build it (same weights every time) and what it outputs."""

    def __init__(self, kind: str):
        self.kind, self.unet, self.inputs = kind, tiny_components(0)["unet"].requires_grad_(False), _inputs()

    def build(self):
        torch.manual_seed(0)  # WriteNet's glyph/position encoders are randomly initialised
        if self.kind == "controlnet":
            model = AnyText2ControlNetModel.from_unet(self.unet)
            with torch.no_grad():  # non-zero residuals, so the adapters' effect shows in the output
                for p in model.controlnet_down_blocks.parameters():
                    p.copy_(torch.randn(p.shape) * 0.05)
            return model
        return AnyText2AttnXModel.from_unet(self.unet)

    def output(self, model) -> torch.Tensor:
        i = self.inputs
        if self.kind == "controlnet":
            out = model(i["x"], i["t"], i["context"], i["glyphs"], i["positions"], i["masked"])
            return torch.cat([r.flatten() for r in (*out.down_block_res_samples, out.mid_block_res_sample)])
        model.attach(self.unet)
        try:
            return self.unet(i["x"], i["t"], i["context"]).sample
        finally:
            model.detach(self.unet)


def lora_config(kind: str):
    """The adapter config a training run uses (WriteNet: its zero convs and encoders excluded)."""
    return lora.lora_config(TrainingConfig(lora_rank=2, lora_alpha=4, lora_components=[kind]), kind)


def trained(case: Case):
    """``add_adapter`` + two Adam steps on the adapter weights (the first moves only B, which starts at 0)."""
    model = case.build()
    with torch.no_grad():
        base = case.output(model)
    model.add_adapter(lora_config(case.kind))
    with torch.no_grad():
        assert torch.equal(case.output(model), base)  # B = 0: the adapter starts as a no-op
    params = [p for n, p in model.named_parameters() if lora.is_lora_param(n)]
    assert params and all(p.requires_grad for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-2)  # steps of ~lr whatever the gradient scale
    for _ in range(2):
        optimizer.zero_grad()
        case.output(model).square().mean().backward()
        optimizer.step()
    model.eval()
    return model, base


# the saved config keeps WriteNet's exclude_modules; diffusers injects by the file's keys, so peft notes it unused
@pytest.mark.filterwarnings("ignore:You have passed exclude_modules")
@pytest.mark.parametrize("kind", ["controlnet", "attnx"])
def test_save_lora_adapter_then_load_lora_adapter_reproduces_the_trained_model(kind, tmp_path):
    case = Case(kind)
    model, base = trained(case)
    assert isinstance(model, PeftAdapterMixin) and lora.has_adapter(model)
    with torch.no_grad():
        out = case.output(model)
    print(f"{kind}: the adapters change the output by {(out - base).abs().max().item():.2e}")
    assert (out - base).abs().max() > 1e-3  # the step changed the output: the comparison below means something

    model.save_lora_adapter(str(tmp_path), weight_name=lora.ADAPTER_WEIGHTS)
    fresh = case.build().eval()
    fresh.load_lora_adapter(  # as docs/lora.md shows
        str(tmp_path), weight_name="pytorch_lora_weights.safetensors", prefix=None, adapter_name=lora.ADAPTER_NAME
    )
    assert fresh.peft_config[lora.ADAPTER_NAME].lora_alpha == 4  # the config travels in the file's metadata
    with torch.no_grad():
        loaded = case.output(fresh)
    print(f"{kind}: trained vs loaded max |diff| = {(loaded - out).abs().max().item():.1e}")
    assert torch.equal(loaded, out)  # same weights, same layers, same kernels: bitwise equal

    if kind == "controlnet":  # the zero convs and encoders keep full training: no adapter there
        adapted = {n.rpartition(".lora_A.")[0] for n, _ in fresh.named_parameters() if ".lora_A." in n}
        assert adapted and not any(n.startswith(lora.WRITENET_FULL) for n in adapted)


@pytest.mark.parametrize("kind", ["controlnet", "attnx"])
def test_fuse_and_unfuse_lora(kind):
    """diffusers' fuse_lora gives the adapted output from merged weights; unfuse_lora gives the adapters back.
    In float64: the tiny random WriteNet amplifies weight rounding ~4e7x (a 1-ulp change of its adapted base
    weights moves the output by 9e-5 in float32, 8.8e-9 in float64; measured)."""
    case = Case(kind)
    model, _ = trained(case)
    cast_model(model, torch.float64), cast_model(case.unet, torch.float64)
    case.inputs = {k: v.double() if v.is_floating_point() else v for k, v in case.inputs.items()}
    with torch.no_grad():
        out = case.output(model)
        model.fuse_lora(adapter_names=[lora.ADAPTER_NAME])
        fused = case.output(model)
        model.unfuse_lora()
        unfused = case.output(model)
    spread = max((fused - out).abs().max().item(), (unfused - out).abs().max().item())
    print(f"{kind}: fused / unfused vs adapted max |diff| = {spread:.1e} (max |output| {out.abs().max().item():.1f})")
    # float64 rounding of W + scale B A and of its inverse, amplified as above (measured: WriteNet 9.4e-9, AttnX
    # 1.9e-15); 10x margin over WriteNet's
    assert spread <= 1e-7


def test_earlier_peft_adapter_folders_still_load(tmp_path):
    """Earlier releases wrote ``<component>_lora/`` as peft folders: ``load_lora_adapters`` reads those too."""
    loaded, outputs = {}, {}
    for kind in ("controlnet", "attnx"):
        case = Case(kind)
        model, _ = trained(case)
        with torch.no_grad():
            outputs[kind] = case.output(model)
        folder = tmp_path / f"{kind}_lora"
        model.peft_config[lora.ADAPTER_NAME].save_pretrained(str(folder))  # the old layout, as peft writes it
        save_file(get_peft_model_state_dict(model), str(folder / lora.PEFT_ADAPTER_WEIGHTS))
        loaded[kind] = (case, case.build().eval())
    pipe = SimpleNamespace(controlnet=loaded["controlnet"][1], attnx=loaded["attnx"][1])
    assert lora.load_lora_adapters(pipe, str(tmp_path)) == ["controlnet", "attnx"]
    for kind, (case, model) in loaded.items():
        with torch.no_grad():
            assert torch.equal(case.output(model), outputs[kind]), kind
    assert not os.path.exists(tmp_path / lora.UNET_LORA_WEIGHTS)


def test_checkpoint_adapter_folders_resume_in_place_old_and_new(tmp_path):
    """Resume (``lora.load_adapter``) fills the adapters ``add_adapters`` made, keeping the parameter objects the
    optimizer holds, from ``save_adapter``'s folder and from an earlier release's ``adapter_model.safetensors``."""
    case = Case("controlnet")
    model, _ = trained(case)
    new, old = tmp_path / "new", tmp_path / "old"
    lora.save_adapter(model, str(new), with_trained_base=True)
    os.makedirs(old)
    save_file(get_peft_model_state_dict(model), str(old / lora.PEFT_ADAPTER_WEIGHTS))
    with torch.no_grad():
        out = case.output(model)
    for folder in (new, old):
        fresh = case.build().eval()
        fresh.add_adapter(lora_config("controlnet"))
        params = {n: p for n, p in fresh.named_parameters()}
        lora.load_adapter(fresh, str(folder))
        assert all(p is params[n] for n, p in fresh.named_parameters())  # in place
        with torch.no_grad():
            assert torch.equal(case.output(fresh), out), folder.name


def test_saving_an_adapter_logs_no_empty_float32_warning(tmp_path):
    """diffusers' save_lora_adapter calls ``self.to(dtype=None)``, and ``ModelMixin.to`` (0.42) then warns that
    modules "should be kept in float32: []"; ``lora.save_adapter`` (every LoRA checkpoint) drops that message."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    log = logging.getLogger("diffusers")  # diffusers' library root logger: its records stop there
    model = Case("attnx").build()
    model.add_adapter(lora_config("attnx"))
    log.addHandler(handler)
    try:
        model.save_lora_adapter(str(tmp_path / "plain"))
        plain, messages[:] = list(messages), []
        lora.save_adapter(model, str(tmp_path / "ours"))
    finally:
        log.removeHandler(handler)
    # diffusers 0.42 warns here, the floor (0.37) does not: print what the plain call logged
    print(f"save_lora_adapter alone: {sum('should be kept in float32: []' in m for m in plain)} such warnings")
    assert not any("should be kept in float32" in m for m in messages), messages
