import math
import pickle

import pytest
import torch
import yaml
from safetensors.torch import save_file

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel
from anytext2_diffusers.configs import config_path
from anytext2_diffusers.conversion.original import build_diffusion_models
from anytext2_diffusers.conversion.reference_layout import diffusion_layout
from anytext2_diffusers.conversion.report import key_report
from anytext2_diffusers.conversion.to_original import to_original_state_dict
from anytext2_diffusers.testing import TINY_CHANNELS, TINY_CONTEXT_DIM, TINY_HEADS, tiny_recognizer
from anytext2_diffusers.utils.checkpoint_io import LazyStateDict, UnsafeCheckpointError, load_state_dict_file


def tiny_original_config() -> dict:
    """The shipped SD1.5 yaml shrunk to the tiny components' sizes."""
    with open(config_path("anytext2_sd15.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    p = cfg["model"]["params"]
    mult = [c // TINY_CHANNELS[0] for c in TINY_CHANNELS]
    for name in ("control_stage_config", "unet_config"):
        p[name]["params"].update(
            model_channels=TINY_CHANNELS[0], channel_mult=mult, num_heads=TINY_HEADS, context_dim=TINY_CONTEXT_DIM
        )
    p["first_stage_config"]["params"]["ddconfig"].update(ch=TINY_CHANNELS[0], ch_mult=mult)
    return cfg


@pytest.fixture()
def trained_parts(tiny):
    """Tiny components with WriteNet/AttnX whose zero-initialised parts were perturbed (as after training)."""
    unet = tiny["unet"]
    torch.manual_seed(0)
    writenet = AnyText2ControlNetModel.from_unet(unet)
    attnx = AnyText2AttnXModel.from_unet(unet)
    with torch.no_grad():
        for p in list(writenet.parameters()) + list(attnx.parameters()):
            p.add_(0.01 * torch.randn_like(p))
    return dict(unet=unet, attnx=attnx, controlnet=writenet, vae=tiny["vae"])


def test_reference_layout_matches_shipped_sd15_counts():
    with open(config_path("anytext2_sd15.yaml"), encoding="utf-8") as f:
        layout = diffusion_layout(yaml.safe_load(f))
    from diffusers import UNet2DConditionModel

    from anytext2_diffusers.configs import sd15_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in sd15_config("unet").items() if not k.startswith("_")})
        writenet = AnyText2ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        attnx = AnyText2AttnXModel.from_unet(unet, load_weights_from_unet=False)
    ref_writenet = sum(math.prod(s) for k, s in layout.items() if k.startswith("control_model."))
    ref_attnx = sum(math.prod(s) for k, s in layout.items() if ".attn1x." in k or ".attn2x." in k)
    assert sum(p.numel() for p in writenet.parameters()) == ref_writenet == 361_511_208
    assert sum(p.numel() for p in attnx.parameters()) == ref_attnx == 57_521_920


def test_round_trip_to_original_and_back(trained_parts):
    cfg = tiny_original_config()
    original = to_original_state_dict(cfg, **trained_parts)
    layout = diffusion_layout(cfg)
    diffusion_keys = {k for k in original if k in layout}
    assert diffusion_keys == set(layout)  # 0 missing, 0 unexpected for the reference layout
    assert all(tuple(original[k].shape) == layout[k] for k in layout)
    rebuilt = build_diffusion_models(original, cfg)
    for name, model in trained_parts.items():
        a, b = model.state_dict(), rebuilt[name].state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    report = key_report(original, used=set(layout) | {k for k in original if k not in layout})
    assert not report.unused and report.total["model.diffusion_model."] > 0


def test_reference_keys_of_the_parity_pack_are_covered(parity_dir):
    import json

    cfg = yaml.safe_load((parity_dir / "tiny_anytext2.yaml").read_text())
    layout = diffusion_layout(cfg)
    listing = {}
    for line in (parity_dir / "state_dict_keys.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        listing[key] = tuple(json.loads(shape))
    diffusion = {
        k: s
        for k, s in listing.items()
        if k.startswith(("model.diffusion_model.", "control_model.", "first_stage_model."))
    }
    assert diffusion == layout


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": Exploit()}}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_checkpoint_files_load(tmp_path):
    state = {"a.weight": torch.ones(2, 2)}
    torch.save({"state_dict": state}, tmp_path / "m.ckpt")
    save_file(state, tmp_path / "m.safetensors")
    assert torch.equal(load_state_dict_file(tmp_path / "m.ckpt")["a.weight"], state["a.weight"])
    assert torch.equal(load_state_dict_file(tmp_path / "m.safetensors")["a.weight"], state["a.weight"])
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_state_dict_file(tmp_path / "missing.ckpt")


def test_lazy_state_dict_reads_what_is_asked(tmp_path):
    """The converter's reader: the same tensors as a whole load, shapes without data, refusals kept."""
    state = {"a.weight": torch.arange(6.0).reshape(2, 3).half(), "b.bias": torch.ones(3)}
    torch.save({"state_dict": state}, tmp_path / "m.ckpt")
    save_file(state, tmp_path / "m.safetensors")
    for name in ("m.ckpt", "m.safetensors"):
        lazy = LazyStateDict(tmp_path / name)
        assert list(lazy) == list(state) and len(lazy) == 2 and "b.bias" in lazy and "c" not in lazy
        assert lazy.shape("a.weight") == (2, 3)
        assert set(lazy.with_prefix("a.")) == {"a.weight"}
        assert all(torch.equal(lazy[k], v) and lazy[k].dtype == v.dtype for k, v in state.items())
        with pytest.raises(KeyError):
            lazy["c"]
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": {"x": Exploit()}}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        LazyStateDict(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_from_sd15_single_file_initialises_like_tool_add_anytext(tiny, tmp_path):
    from anytext2_diffusers.conversion.sd15 import anytext2_parts, load_sd15_components, placement_from_original
    from anytext2_diffusers.conversion.to_original import diffusers_to_original_mapping

    cfg = tiny_original_config()
    # A single-file SD1.5 checkpoint of the tiny stack: stock UNet + VAE + CLIP keys in ldm naming.
    mapping = diffusers_to_original_mapping(cfg)
    sd15 = {}
    for name in ("unet", "vae"):
        state = tiny[name].state_dict()
        for key, (ldm_key, shape) in mapping[name].items():
            sd15[ldm_key] = state[key].reshape(shape).contiguous()
    for key, value in tiny["text_encoder"].state_dict().items():
        sd15["cond_stage_model.transformer.text_model." + key] = value
    save_file(sd15, tmp_path / "sd15.safetensors")
    tiny["tokenizer"].save_pretrained(tmp_path / "clip")
    tiny["text_encoder"].config.save_pretrained(tmp_path / "clip")

    parts = load_sd15_components(tmp_path / "sd15.safetensors", cfg, clip_model_name_or_path=tmp_path / "clip")
    for name in ("unet", "vae", "text_encoder"):
        a, b = tiny[name].state_dict(), parts[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    blocks = anytext2_parts(parts, tiny_recognizer(0), **placement_from_original(cfg, parts["unet"]))
    writenet, attnx = blocks["controlnet"], blocks["attnx"]
    unet = parts["unet"]
    assert torch.equal(
        writenet.down_blocks[2].attentions[1].proj_in.weight, unet.down_blocks[2].attentions[1].proj_in.weight
    )
    assert torch.equal(writenet.mid_block.resnets[1].conv2.weight, unet.mid_block.resnets[1].conv2.weight)
    assert all(p.abs().sum() == 0 for p in writenet.controlnet_down_blocks.parameters())
    assert writenet.fuse_block.weight.abs().sum() == 0 and writenet.controlnet_mid_block.weight.abs().sum() == 0
    layer = attnx.get_submodule("up_blocks.2.attentions.1.transformer_blocks.0")
    block = unet.get_submodule("up_blocks.2.attentions.1.transformer_blocks.0")
    assert torch.equal(layer.attn2x.to_k.weight, block.attn2.to_k.weight)
    assert torch.equal(layer.attn1x.to_out[0].bias, block.attn1.to_out[0].bias)
