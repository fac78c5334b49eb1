"""UNet LoRAs (diffusers' loaders, peft) and base-model swaps on the AnyText2 pipeline."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from anytext2_diffusers.testing import quick_generate, tiny_components, tiny_unet_config

pytestmark = pytest.mark.usefixtures("one_thread")


def stock_unet_lora(tmp_path, seed=7):
    """A LoRA trained (here: randomised) on a plain SD1.5-shaped UNet, saved in diffusers' LoRA format."""
    unet = tiny_components(0)["unet"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    return tmp_path / "lora"


def test_stock_lora_loads_fuses_and_unfuses(pipe, tmp_path):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = quick_generate(pipe)
    lora = stock_unet_lora(tmp_path)
    pipe.load_lora_weights(lora, adapter_name="style")
    assert pipe.attnx.attached_unet is pipe.unet
    assert set(pipe.unet.state_dict()) - set(before)  # adapter keys live in the stock UNet's namespace
    with_lora = quick_generate(pipe)
    assert (with_lora - base).abs().max() > 1e-3
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    torch.testing.assert_close(quick_generate(pipe), base, rtol=0, atol=1e-6)
    pipe.unload_lora_weights()
    torch.testing.assert_close(quick_generate(pipe), base, rtol=0, atol=0)

    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.fuse_lora()
    torch.testing.assert_close(quick_generate(pipe), with_lora, rtol=0, atol=1e-4)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    for k in before:  # fuse adds W + BA, unfuse subtracts it again: equal up to float rounding
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6)
    pipe.unet.load_state_dict(before)


def test_base_unet_swap_keeps_attnx_and_changes_the_look(pipe):
    original = pipe.unet
    base = quick_generate(pipe)
    torch.manual_seed(123)
    other = UNet2DConditionModel(**tiny_unet_config()).eval()
    pipe.swap_unet(other)
    try:
        assert pipe.attnx.attached_unet is other
        swapped = quick_generate(pipe)
        assert swapped.shape == base.shape and (swapped - base).abs().max() > 1e-3
        with pytest.raises(ValueError, match="same architecture"):
            pipe.swap_unet(UNet2DConditionModel(**dict(tiny_unet_config(), block_out_channels=(32, 32, 32, 64))))
    finally:
        pipe.swap_unet(original)
    torch.testing.assert_close(quick_generate(pipe), base, rtol=0, atol=0)
