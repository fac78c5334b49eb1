"""Parity of the training loss with the reference ``p_losses`` (parity pack section "(d) p_losses").

The pack's reference conditioning (``cond.img_context``, ``cond.text_context``) and latents are fed to our
WriteNet + UNet/AttnX call and our loss code; every setting comes from ``reference_meta.json``, the control
scales included. Needs ``ANYTEXT2_PARITY_DIR`` (see shared/parity/README.md); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from _parity_helpers import assert_close, assert_scalar_close


def nchw(array) -> torch.Tensor:
    """NHWC -> contiguous NCHW float32 (a channels-last view changes the VAE's numerics)."""
    return torch.from_numpy(np.asarray(array)).float().permute(0, 3, 1, 2).contiguous()


def per_line(array) -> torch.Tensor:
    """(L, B, H, W, C) line-major arrays -> (B, L, C, H, W)."""
    return torch.from_numpy(np.asarray(array)).float().permute(1, 0, 4, 2, 3).contiguous()


@pytest.fixture(scope="module")
def pack(parity_dir):
    from safetensors.torch import load_file

    from anytext2_diffusers.conversion.original import build_diffusion_models, upcast_floats
    from anytext2_diffusers.models.ocr import PPOCRRecognizer, load_anytext2_ocr_state_dict, load_character_list

    root = parity_dir
    checkpoint = upcast_floats(load_file(root / "anytext2_tiny_state_dict.safetensors"))
    original_config = yaml.safe_load((root / "tiny_anytext2.yaml").read_text())
    models = build_diffusion_models(checkpoint, original_config)
    classes = checkpoint["text_predictor.head.fc.bias"].shape[0]
    chars = load_character_list()
    recognizer = PPOCRRecognizer(num_classes=classes, characters=chars if len(chars) == classes else None)
    models["ocr"] = load_anytext2_ocr_state_dict(recognizer, checkpoint, prefix="text_predictor.").eval()
    batch = np.load(root / "batch.npz")
    return dict(
        models=models,
        config=original_config["model"]["params"],
        ref=load_file(root / "reference_outputs.safetensors"),
        meta=json.loads((root / "reference_meta.json").read_text()),
        batch={k: batch[k] for k in batch.files},
        batch_json=json.loads((root / "batch.json").read_text()),
    )


def pack_eps(models, ref, batch, x_noisy, t, **options):
    """The training forward (WriteNet residuals -> UNet + AttnX eps) on the pack's batch and contexts."""
    from anytext2_diffusers.training.step import predict_noise

    return predict_noise(
        models["unet"],
        models["controlnet"],
        x_noisy,
        t,
        ref["cond.img_context"],
        ref["cond.text_context"],
        glyphs=per_line(batch["glyphs"]).flatten(1, 2),
        positions=per_line(batch["positions"])[:, :, 0],
        masked_latents=ref["latent.masked_z"],
        **options,
    )


def test_p_losses_match_the_reference(pack):
    from diffusers import DDPMScheduler

    from anytext2_diffusers.models.ocr import crop_lines
    from anytext2_diffusers.training.losses import LossSettings, OCRTargets, p_losses, predict_x0

    ref, meta, settings, params = pack["ref"], pack["meta"], pack["meta"]["settings"], pack["config"]
    models, batch, batch_json = pack["models"], pack["batch"], pack["batch_json"]

    scheduler = DDPMScheduler(
        num_train_timesteps=int(params["timesteps"]),
        beta_start=float(params["linear_start"]),
        beta_end=float(params["linear_end"]),
        beta_schedule="scaled_linear",
    )
    x_start, noise, t = ref["loss.x_start"], ref["loss.noise"], ref["loss.t"]
    x_noisy = scheduler.add_noise(x_start, noise, t)
    assert_close("loss.x_noisy", x_noisy, ref["loss.x_noisy"])

    n_lines = [int(n) for n in batch["n_lines"]]
    positions = per_line(batch["positions"])  # (B, L, 1, H, W)
    models["attnx"].attach(models["unet"])
    try:
        with torch.no_grad():
            model_output = pack_eps(
                models, ref, batch, x_noisy, t,
                only_mid_control=bool(settings.get("only_mid_control", False)),
                attnx_scale=float(settings.get("attnx_scale", 1.0)),
                control_scales=settings["control_scales"],
            )  # fmt: skip
    finally:
        models["attnx"].detach()
    assert_close("loss.model_output", model_output, ref["loss.model_output"])

    pred_x0 = predict_x0(ref["loss.x_noisy"], t, ref["loss.model_output"], scheduler.alphas_cumprod)
    assert_close("loss.pred_x0", pred_x0, ref["loss.pred_x0"])

    lines = range(max(n_lines))
    targets = OCRTargets(
        images=(nchw(batch["img"]) + 1.0) / 2.0 * 255.0,
        positions=positions,
        n_lines=n_lines,
        texts=[batch_json["texts"][j][i] for i, n in enumerate(n_lines) for j in lines if j < n],
        languages=[batch_json["language"][j][i] for i, n in enumerate(n_lines) for j in lines if j < n],
    )
    loss_settings = LossSettings(
        loss_alpha=float(settings["loss_alpha"]),
        loss_beta=float(settings["loss_beta"]),
        latin_weight=float(settings["latin_weight"]),
        with_step_weight=bool(settings["with_step_weight"]),
        use_vae_upsample=bool(settings["use_vae_upsample"]),
    )
    with torch.no_grad():
        out = p_losses(
            ref["loss.model_output"],
            noise,
            ref["loss.x_noisy"],
            t,
            nchw(batch["inv_mask"]),
            scheduler.alphas_cumprod,
            loss_settings,
            vae=models["vae"],
            recognizer=models["ocr"],
            targets=targets,
        )
    if loss_settings.uses_ocr and loss_settings.use_vae_upsample:
        for k, crop in enumerate(crop_lines(out.decoded, positions, n_lines)):
            assert_close(f"loss.crop_decoded.{k}", crop, ref[f"loss.crop_decoded.{k}"])
    assert_close("loss.simple", out.simple.mean(), ref["loss.simple"])
    assert_close("loss.total", out.loss, ref["loss.total"])
    # small scalars: relatively (the absolute criterion would accept any OCR loss below 1e-4)
    assert_scalar_close("loss.ocr", out.ocr.mean().item(), ref["loss.ocr"].item())
    assert_scalar_close("loss.ctc", out.ctc.mean().item(), ref["loss.ctc"].item())
    print(
        f"parity: simple {out.simple.mean().item():.6f} ocr {out.ocr.mean().item():.3e} "
        f"ctc {out.ctc.mean().item():.6f} total {out.loss.item():.6f}"
    )
    # the scalars the pack states in its meta file
    scalars = meta["scalars"]
    assert abs(out.loss.item() - scalars["loss.total"]) <= 1e-4 * max(1.0, abs(scalars["loss.total"]))


def test_predict_noise_applies_the_control_scales(pack):
    """The reference's apply_model multiplies residual i by control_scales[i] before the UNet adds it. With
    scales that are not 1 (the pack's are 1), our training call must equal the UNet fed the reference's own
    residuals (``control.out.*``, independent of the noisy latent under fast control) times those scales."""

    ref, meta, models, batch = pack["ref"], pack["meta"], pack["models"], pack["batch"]
    settings = meta["settings"]
    n = meta["scalars"]["n_control_outputs"]
    scales = [0.5 + 0.1 * i for i in range(n)]
    residuals = [ref[f"control.out.{i:02d}"] * scales[i] for i in range(n)]
    x_noisy, t = ref["loss.x_noisy"], ref["loss.t"]
    attnx_kwargs = {"attnx_scale": float(settings["attnx_scale"])}
    models["attnx"].attach(models["unet"])
    try:
        with torch.no_grad():
            ours = pack_eps(
                models, ref, batch, x_noisy, t, attnx_scale=attnx_kwargs["attnx_scale"], control_scales=scales
            )
            expected = models["unet"](
                x_noisy,
                t,
                ref["cond.img_context"],
                down_block_additional_residuals=residuals[:-1],
                mid_block_additional_residual=residuals[-1],
                cross_attention_kwargs=dict(attnx_kwargs),
            ).sample
    finally:
        models["attnx"].detach()
    assert_close("eps with control scales 0.5..1.7", ours, expected)
    # the scales matter here: unscaled residuals give another eps
    assert (ours - ref["loss.model_output"]).abs().max() > 100 * 1e-4 * max(1.0, ref["loss.model_output"].abs().max())
