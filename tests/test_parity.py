"""Parity with the reference AnyText2 run at tiny scale (``ANYTEXT2_PARITY_DIR``, see its README).

Every setting comes from ``reference_meta.json`` and every size from the pack's files, so another pack
with the same layout runs unchanged.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from _parity import assert_close, line_major, nchw
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def pack(parity_dir):
    from anytext2_diffusers.conversion.original import build_diffusion_models, upcast_floats

    checkpoint = upcast_floats(load_file(parity_dir / "anytext2_tiny_state_dict.safetensors"))
    config = yaml.safe_load((parity_dir / "tiny_anytext2.yaml").read_text())
    models = build_diffusion_models(checkpoint, config)
    return dict(
        checkpoint=checkpoint,
        models=models,
        ref=load_file(parity_dir / "reference_outputs.safetensors"),
        meta=json.loads((parity_dir / "reference_meta.json").read_text()),
        batch=dict(np.load(parity_dir / "batch.npz")),
        batch_json=json.loads((parity_dir / "batch.json").read_text()),
        dir=parity_dir,
    )


def test_vae_latents_and_decode(pack):
    vae, ref, scale = pack["models"]["vae"], pack["ref"], pack["meta"]["scale_factor"]
    with torch.no_grad():
        for source, tag in (("img", "img"), ("masked_img", "masked")):
            posterior = vae.encode(nchw(pack["batch"][source])).latent_dist
            assert_close(f"latent.{tag}_mean", posterior.mean, ref[f"latent.{tag}_mean"])
            assert_close(f"latent.{tag}_logvar", posterior.logvar, ref[f"latent.{tag}_logvar"])
            z = scale * (posterior.mean + posterior.std * ref[f"latent.{tag}_eps"])
            assert_close(f"latent.{tag}_z", z, ref[f"latent.{tag}_z" if tag == "img" else "latent.masked_z"])
        decoded = vae.decode(ref["latent.img_z"] / scale).sample
    assert_close("vae.decoded", decoded, ref["vae.decoded"])


def test_writenet_residuals(pack):
    ref, meta = pack["ref"], pack["meta"]
    writenet = pack["models"]["controlnet"]
    with torch.no_grad():
        out = writenet(
            ref["control.x_noisy"],
            ref["control.t"],
            ref["cond.text_context"],
            glyphs=line_major(pack["batch"]["glyphs"]).flatten(1, 2),
            positions=line_major(pack["batch"]["positions"]).flatten(1, 2),
            masked_latents=ref["latent.masked_z"],
        )
    residuals = list(out.down_block_res_samples) + [out.mid_block_res_sample]
    assert len(residuals) == meta["scalars"]["n_control_outputs"]
    for i, res in enumerate(residuals):
        # control.out.* are the raw outputs; control_scales apply when the UNet consumes them.
        assert_close(f"control.out.{i:02d}", res, ref[f"control.out.{i:02d}"])


def test_unet_eps_with_attnx(pack):
    ref, meta = pack["ref"], pack["meta"]
    unet, attnx = pack["models"]["unet"], pack["models"]["attnx"]
    settings = meta.get("settings", {})
    n = pack["meta"]["scalars"]["n_control_outputs"]
    scales = settings.get("control_scales", [1.0] * n)
    residuals = [ref[f"control.out.{i:02d}"] * scales[i] for i in range(n)]
    if settings.get("only_mid_control", False):
        residuals[:-1] = [torch.zeros_like(r) for r in residuals[:-1]]
    attnx.attach(unet)
    try:
        with torch.no_grad():
            eps = unet(
                ref["control.x_noisy"],
                ref["control.t"],
                ref["cond.img_context"],
                down_block_additional_residuals=residuals[:-1],
                mid_block_additional_residual=residuals[-1],
                cross_attention_kwargs={"attnx_scale": float(settings.get("attnx_scale", 1.0))},
            ).sample
    finally:
        attnx.detach(unet)
    assert_close("unet.eps", eps, ref["unet.eps"])


def test_image_caption_context(pack):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from anytext2_diffusers.conversion.original import convert_text_encoder, load_text_encoder_weights

    clip_dir = pack["dir"] / "tiny_clip"
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(clip_dir)).eval()
    load_text_encoder_weights(text_encoder, convert_text_encoder(pack["checkpoint"]))
    ids = tokenizer(
        pack["batch_json"]["img_caption"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert torch.equal(ids, pack["ref"]["cond.img_input_ids"])
    with torch.no_grad():
        context = text_encoder(ids).last_hidden_state
    assert_close("cond.img_context", context, pack["ref"]["cond.img_context"])
