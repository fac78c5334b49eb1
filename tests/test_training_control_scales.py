"""WriteNet's per-residual conditioning scales in the training forward (the reference's ``control_scales``,
applied by its ``apply_model`` in training as in sampling): residual i reaches the UNet times scale i."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import make_data, save_small_recognizer, tiny_config

from anytext2_diffusers.models import AnyText2AttnXModel, AnyText2ControlNetModel
from anytext2_diffusers.training import step
from anytext2_diffusers.training.config import TrainingConfig

SCALES = [0.5 + 0.1 * i for i in range(13)]


def test_default_is_one_per_residual_and_saved_in_the_config():
    assert TrainingConfig().control_scales == [1.0] * 13


def test_control_scales_for_checks_the_count(tiny):
    writenet = AnyText2ControlNetModel.from_unet(tiny["unet"])
    assert step.control_scales_for(writenet, [2.0]) == [2.0] * writenet.num_residuals
    assert step.control_scales_for(writenet, SCALES) == SCALES
    with pytest.raises(ValueError, match="control_scales: WriteNet has 13 residuals, got 2 values"):
        step.control_scales_for(writenet, [1.0, 1.0])


def test_predict_noise_scales_each_residual(tiny, one_thread):
    unet = tiny["unet"].eval()
    writenet = AnyText2ControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero convs start at 0: give them weights so that the residuals matter
        for conv in [*writenet.controlnet_down_blocks, writenet.controlnet_mid_block, writenet.fuse_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
    attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
    size = 16  # latent side; any multiple of 8 fits the tiny UNet
    x = torch.randn(2, 4, size, size, generator=generator)
    t = torch.tensor([10, 500])
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    glyphs = (torch.rand(2, 1, size * 8, size * 8, generator=generator) > 0.9).float()
    positions = (torch.rand(2, 2, size * 8, size * 8, generator=generator) > 0.5).float()
    masked = torch.randn(2, 4, size, size, generator=generator)
    inputs = dict(glyphs=glyphs, positions=positions, masked_latents=masked)
    try:
        with torch.no_grad():
            scaled = step.predict_noise(unet, writenet, x, t, context, context, **inputs, control_scales=SCALES)
            plain = step.predict_noise(unet, writenet, x, t, context, context, **inputs)
            res = writenet(x, t, context, **inputs)
            residuals = [r * s for r, s in zip([*res.down_block_res_samples, res.mid_block_res_sample], SCALES)]
            expected = unet(
                x,
                t,
                context,
                down_block_additional_residuals=residuals[:-1],
                mid_block_additional_residual=residuals[-1],
            ).sample
    finally:
        attnx.detach()
    # the same operations in the same order (conv(r) * 1.0 * s == conv(r) * s in float32): bitwise equal
    torch.testing.assert_close(scaled, expected, rtol=0, atol=0)
    assert (scaled - plain).abs().max() > 1e-3  # the scales change eps: ignoring them fails the line above


def test_training_forward_takes_the_configured_scales(tmp_path, monkeypatch, one_thread):
    from anytext2_diffusers.data import Collator
    from anytext2_diffusers.training.data import build_datasets
    from anytext2_diffusers.training.speed import build_training_model, sample_generators

    config = tiny_config(
        str(tmp_path / "out"),
        make_data(str(tmp_path / "train"), n=2, seed=0),
        save_small_recognizer(str(tmp_path / "ocr")),
        control_scales=SCALES,
    )
    train_set, _ = build_datasets(config)
    model, _, _ = build_training_model(config)
    assert model.control_scales == SCALES
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("control_scales"))
        return predict_noise(*args, **kwargs)

    predict_noise = step.predict_noise
    monkeypatch.setattr(step, "predict_noise", spy)
    batch = Collator(config.max_lines)([train_set[(0, i)] for i in range(2)])
    with torch.no_grad():
        model(batch, sample_generators(0, 0, batch.index))
    assert seen == [SCALES]
