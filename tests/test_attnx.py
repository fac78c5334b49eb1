import pytest
import torch

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel


def _inputs(batch=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, 4, 32, 32, generator=g), torch.tensor([10, 700]), torch.randn(batch, 77, 32, generator=g)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_default_placement_is_mid_and_up_blocks_1_2(tiny):
    attnx = AnyText2AttnXModel.from_unet(tiny["unet"])
    paths = [p for p, _ in attnx.layers()]
    assert paths[0] == "mid_block.attentions.0.transformer_blocks.0"
    assert sorted({p.split(".attentions")[0] for p in paths}) == ["mid_block", "up_blocks.1", "up_blocks.2"]
    assert len(paths) == 1 + 3 + 3
    assert all(".attn1x." in k or ".attn2x." in k for k in attnx.state_dict())


def test_from_unet_copies_attn1_and_attn2(tiny):
    unet = tiny["unet"]
    attnx = AnyText2AttnXModel.from_unet(unet)
    for path, layer in attnx.layers():
        block = unet.get_submodule(path)
        for ours, theirs in ((layer.attn1x, block.attn1), (layer.attn2x, block.attn2)):
            a, b = ours.state_dict(), theirs.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scale_zero_equals_stock_and_detach_restores_exactly(tiny):
    unet = tiny["unet"]
    x, t, ctx = _inputs()
    stock_state = _state(unet)
    with torch.no_grad():
        stock = unet(x, t, ctx).sample
        attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
        assert set(unet.state_dict()) == set(stock_state)
        zero = unet(x, t, ctx, cross_attention_kwargs={"attnx_scale": 0.0}).sample
        live = unet(x, t, ctx).sample
        attnx.scale = 0.0
        zero_attr = unet(x, t, ctx).sample
        attnx.scale = 1.0
        attnx.detach(unet)
        after = unet(x, t, ctx).sample
    assert torch.equal(zero, stock) and torch.equal(zero_attr, stock)
    assert (live - stock).abs().max() > 1e-3
    assert torch.equal(after, stock)
    assert all(torch.equal(v, stock_state[k]) for k, v in unet.state_dict().items())
    assert type(unet).__name__ == "UNet2DConditionModel"


def test_attnx_matches_reference_formula_on_one_block(tiny):
    """h += attn1x(norm1 h) * s; h += attn2x(norm2 h, ctx) * s, after attn2 and before the feed-forward."""
    unet = tiny["unet"]
    attnx = AnyText2AttnXModel.from_unet(unet, scale=0.7)
    path, layer = next(attnx.layers())
    block = unet.get_submodule(path)
    h = torch.randn(2, 64, 64)
    ctx = torch.randn(2, 77, 32)
    with torch.no_grad():
        attnx.attach(unet)
        unet(*_inputs())  # sets the active scale for this call
        ours = block(h, encoder_hidden_states=ctx)
        attnx.detach(unet)
        r = h + block.attn1(block.norm1(h))
        r = r + block.attn2(block.norm2(r), encoder_hidden_states=ctx)
        r = r + 0.7 * layer.attn1x(block.norm1(r))
        r = r + 0.7 * layer.attn2x(block.norm2(r), encoder_hidden_states=ctx)
        r = r + block.ff(block.norm3(r))
    assert torch.allclose(ours, r, atol=1e-5)


def test_frozen_unet_gets_no_gradients(tiny):
    unet = tiny["unet"].requires_grad_(False)
    attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
    torch.manual_seed(0)
    writenet = AnyText2ControlNetModel.from_unet(unet)
    with torch.no_grad():
        writenet.controlnet_mid_block.weight.normal_()
    x, t, ctx = _inputs()
    glyphs = torch.zeros(2, 1, 256, 256)
    glyphs[:, :, 50:80, 40:200] = 1
    res = writenet(x, t, ctx, glyphs, glyphs, torch.randn(2, 4, 32, 32))
    eps = unet(
        x,
        t,
        ctx,
        down_block_additional_residuals=res.down_block_res_samples,
        mid_block_additional_residual=res.mid_block_res_sample,
    ).sample
    eps.square().mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    assert all(p.grad is not None for p in attnx.parameters())
    assert writenet.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert writenet.fuse_block.weight.grad.abs().sum() > 0


def test_save_load_round_trip_and_stock_unet_keys(tiny, tmp_path):
    unet = tiny["unet"]
    attnx = AnyText2AttnXModel.from_unet(unet, scale=0.5)
    with torch.no_grad():
        for p in attnx.parameters():
            p.add_(0.01 * torch.randn_like(p))
    attnx.attach(unet)
    x, t, ctx = _inputs()
    with torch.no_grad():
        before = unet(x, t, ctx).sample
    unet.save_pretrained(tmp_path / "unet")
    attnx.save_pretrained(tmp_path / "attnx")
    attnx.detach(unet)
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(saved) == set(UNet2DConditionModel(**unet.config).state_dict())
    unet2 = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    attnx2 = AnyText2AttnXModel.from_pretrained(tmp_path / "attnx").attach(unet2)
    assert attnx2.scale == 0.5
    with torch.no_grad():
        after = unet2(x, t, ctx).sample
    assert torch.equal(before, after)


def test_attach_errors(tiny):
    unet = tiny["unet"]
    attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
    with pytest.raises(RuntimeError, match="already attached"):
        attnx.attach(unet)
    attnx.detach(unet)
    wrong = AnyText2AttnXModel(
        block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=2, in_up_blocks=(7,)
    )
    with pytest.raises(ValueError, match="no transformer block"):
        wrong.attach(unet)


def test_gradient_checkpointing_keeps_attnx(tiny):
    unet = tiny["unet"].requires_grad_(False)
    attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
    x, t, ctx = _inputs()
    grads = []
    for checkpointing in (False, True):
        unet.train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        attnx.zero_grad()
        unet(x, t, ctx).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in attnx.parameters()])
    unet.disable_gradient_checkpointing()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_attached_unet_is_not_a_submodule(tiny):
    attnx = AnyText2AttnXModel.from_unet(tiny["unet"]).attach(tiny["unet"])
    assert all(".attn1x." in k or ".attn2x." in k for k in attnx.state_dict())
    assert attnx.attached_unet is tiny["unet"]
