import pytest
import torch

from anytext2_diffusers import AnyText2ControlNetModel

torch.manual_seed(0)


def _conditions(batch=2, size=256):
    glyphs = torch.zeros(batch, 1, size, size)
    glyphs[:, :, 40:60, 30:200] = 1.0
    positions = torch.zeros(batch, 1, size, size)
    positions[:, :, 35:65, 25:205] = 1.0
    masked = torch.randn(batch, 4, size // 8, size // 8)
    context = torch.randn(batch, 77, 32)
    return glyphs, positions, masked, context


def _writenet(unet, fuse_weight_scale=0.0):
    torch.manual_seed(0)  # glyph/position encoders are randomly initialised
    model = AnyText2ControlNetModel.from_unet(unet)
    if fuse_weight_scale:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in list(model.controlnet_down_blocks.parameters()) + list(model.controlnet_mid_block.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * fuse_weight_scale)
            model.fuse_block.weight.copy_(torch.randn(model.fuse_block.weight.shape, generator=g) * 0.05)
    return model.eval()


def test_residuals_plug_into_unet_and_fast_control_ignores_latent_and_t(tiny):
    unet = tiny["unet"]
    writenet = _writenet(unet, fuse_weight_scale=0.05)
    glyphs, positions, masked, context = _conditions()
    with torch.no_grad():
        a = writenet(torch.randn(2, 4, 32, 32), 10, context, glyphs, positions, masked)
        b = writenet(torch.randn(2, 4, 32, 32), torch.tensor([500, 900]), context, glyphs, positions, masked)
        assert len(a.down_block_res_samples) == 12
        for x, y in zip(
            a.down_block_res_samples + (a.mid_block_res_sample,), b.down_block_res_samples + (b.mid_block_res_sample,)
        ):
            assert torch.equal(x, y)
        assert a.mid_block_res_sample.abs().max() > 0
        eps = unet(
            torch.randn(2, 4, 32, 32),
            10,
            context,
            down_block_additional_residuals=a.down_block_res_samples,
            mid_block_additional_residual=a.mid_block_res_sample,
        ).sample
    assert eps.shape == (2, 4, 32, 32)


def test_without_fast_control_the_latent_matters(tiny):
    writenet = AnyText2ControlNetModel.from_unet(tiny["unet"], fast_control=False).eval()
    with torch.no_grad():
        for p in writenet.controlnet_mid_block.parameters():
            p.normal_()
    glyphs, positions, masked, context = _conditions()
    with torch.no_grad():
        a = writenet(torch.randn(2, 4, 32, 32), 10, context, glyphs, positions, masked).mid_block_res_sample
        b = writenet(torch.randn(2, 4, 32, 32), 10, context, glyphs, positions, masked).mid_block_res_sample
    assert not torch.allclose(a, b)


def test_from_unet_is_a_no_op_on_the_unet_and_copies_weights(tiny):
    unet = tiny["unet"]
    writenet = _writenet(unet)
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(writenet, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for module in list(writenet.controlnet_down_blocks) + [writenet.controlnet_mid_block, writenet.fuse_block]:
        assert all(p.abs().sum() == 0 for p in module.parameters())
    assert writenet.glyph_block[0].weight.abs().sum() > 0
    glyphs, positions, masked, context = _conditions()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        res = writenet(x, 10, context, glyphs, positions, masked)
        controlled = unet(
            x,
            10,
            context,
            down_block_additional_residuals=res.down_block_res_samples,
            mid_block_additional_residual=res.mid_block_res_sample,
        ).sample
        plain = unet(x, 10, context).sample
    assert torch.equal(controlled, plain)


def test_glyph_union_is_binarised_and_positions_summed(tiny):
    writenet = _writenet(tiny["unet"], fuse_weight_scale=0.05)
    glyphs, positions, masked, context = _conditions()
    x = torch.zeros(2, 4, 32, 32)
    with torch.no_grad():
        ref = writenet(x, 0, context, glyphs, positions, masked).mid_block_res_sample
        # Per-line glyph maps with grey ink give the same union; per-line positions are summed.
        split = torch.cat([glyphs * 0.3, torch.zeros_like(glyphs)], dim=1)
        same = writenet(x, 0, context, split, torch.cat([positions, 0 * positions], 1), masked).mid_block_res_sample
        doubled = writenet(x, 0, context, glyphs, torch.cat([positions, positions], 1), masked).mid_block_res_sample
    assert torch.allclose(ref, same, atol=1e-6)
    assert not torch.allclose(ref, doubled)


def test_conditioning_scale(tiny):
    writenet = _writenet(tiny["unet"], fuse_weight_scale=0.05)
    glyphs, positions, masked, context = _conditions()
    x = torch.zeros(2, 4, 32, 32)
    with torch.no_grad():
        one = writenet(x, 0, context, glyphs, positions, masked)
        half = writenet(x, 0, context, glyphs, positions, masked, conditioning_scale=0.5)
        per = writenet(x, 0, context, glyphs, positions, masked, conditioning_scale=[0.0] * 12 + [1.0])
    assert torch.allclose(half.mid_block_res_sample, one.mid_block_res_sample * 0.5)
    assert all(r.abs().sum() == 0 for r in per.down_block_res_samples)
    assert torch.equal(per.mid_block_res_sample, one.mid_block_res_sample)
    with pytest.raises(ValueError, match="13 values"):
        writenet(x, 0, context, glyphs, positions, masked, conditioning_scale=[1.0] * 3)


def test_glyph_scale_two_reads_double_size_glyphs(tiny):
    writenet = AnyText2ControlNetModel.from_unet(tiny["unet"], glyph_scale=2).eval()
    glyphs, positions, masked, context = _conditions(size=128)
    big = torch.nn.functional.interpolate(glyphs, scale_factor=2)
    with torch.no_grad():
        out = writenet(torch.zeros(2, 4, 16, 16), 0, context, big, positions, masked)
    assert out.down_block_res_samples[0].shape == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="glyph_scale"):
        AnyText2ControlNetModel(glyph_scale=3)


def test_save_load_round_trip(tiny, tmp_path):
    writenet = _writenet(tiny["unet"], fuse_weight_scale=0.05)
    writenet.save_pretrained(tmp_path / "wn")
    assert (tmp_path / "wn" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AnyText2ControlNetModel.from_pretrained(tmp_path / "wn").eval()
    assert loaded.config.fast_control and loaded.config.glyph_scale == 1
    glyphs, positions, masked, context = _conditions()
    x = torch.zeros(2, 4, 32, 32)
    with torch.no_grad():
        a = writenet(x, 0, context, glyphs, positions, masked)
        b = loaded(x, 0, context, glyphs, positions, masked)
    assert all(torch.equal(p, q) for p, q in zip(a.down_block_res_samples, b.down_block_res_samples))


def test_gradient_checkpointing_gives_same_gradients(tiny):
    glyphs, positions, masked, context = _conditions(batch=1, size=128)
    grads = []
    for checkpointing in (False, True):
        writenet = _writenet(tiny["unet"], fuse_weight_scale=0.05).train()
        if checkpointing:
            writenet.enable_gradient_checkpointing()
        out = writenet(torch.zeros(1, 4, 16, 16), 0, context, glyphs, positions, masked)
        sum(r.square().sum() for r in out.down_block_res_samples).backward()
        grads.append(writenet.down_blocks[1].resnets[0].conv1.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
