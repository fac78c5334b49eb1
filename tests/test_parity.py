"""Parity with the reference AnyText2 run at tiny scale (``ANYTEXT2_PARITY_DIR``, see its README).

Every setting comes from ``reference_meta.json`` and every size from the pack's files, so another pack
with the same layout runs unchanged. Each stage reads the reference's own input from the pack and is compared
at the pack's tolerance (``_parity_helpers``).
"""

import json

import numpy as np
import pytest
import torch
import yaml
from _parity_helpers import assert_close
from safetensors.torch import load_file


def nchw(array):
    """NHWC numpy -> contiguous NCHW float32 (the reference feeds contiguous tensors; a channels-last
    view takes other conv kernels, which the VAE amplifies on flat images)."""
    return torch.from_numpy(np.asarray(array)).float().permute(0, 3, 1, 2).contiguous()


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


def line_major_to_batch(array):
    """(L, B, H, W, C) per-line arrays -> (B, L*C, H, W)."""
    t = torch.from_numpy(np.asarray(array)).float()
    lines, batch, h, w, c = t.shape
    return t.permute(1, 0, 4, 2, 3).reshape(batch, lines * c, h, w).contiguous()


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
            glyphs=line_major_to_batch(pack["batch"]["glyphs"]),
            positions=line_major_to_batch(pack["batch"]["positions"]),
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


@pytest.fixture(scope="module")
def caption_encoder(pack):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from anytext2_diffusers.conversion.original import convert_text_encoder, load_text_encoder_weights
    from anytext2_diffusers.models.conditioning import AnyText2CaptionEncoder

    clip_dir = pack["dir"] / "tiny_clip"
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(clip_dir)).eval()
    load_text_encoder_weights(text_encoder, convert_text_encoder(pack["checkpoint"]))
    return AnyText2CaptionEncoder(tokenizer, text_encoder)


def reference_chunks(tokenizer, captions, size):
    """The reference's ``FrozenCLIPEmbedderT3`` ids, written from its rule: tokenize with padding "longest"
    and no truncation, drop the first and last column, cut the rest into ``size``-token pieces, and wrap each
    as ``[bos] piece [last id]``, right-filling the last piece with the last id."""
    content = [tokenizer(c, add_special_tokens=False).input_ids for c in captions]
    longest = max(len(c) for c in content)
    rows = [r for c in content for r in [[tokenizer.bos_token_id, *c, tokenizer.eos_token_id]]]
    rows = [r + [tokenizer.pad_token_id] * (longest + 2 - len(r)) for r in rows]
    chunks = []
    for start in range(0, longest, size):
        piece = [r[1:-1][start : start + size] for r in rows]
        chunks.append(torch.tensor([[r[0], *p, *[r[-1]] * (size - len(p)), r[-1]] for r, p in zip(rows, piece)]))
    return chunks


def test_image_caption_context(pack, caption_encoder):
    captions = pack["batch_json"]["img_caption"]
    ids = caption_encoder.tokenize_image_captions(captions)
    assert torch.equal(ids, pack["ref"]["cond.img_input_ids"])
    with torch.no_grad():
        context = caption_encoder.encode_image_captions(captions)
    assert_close("cond.img_context", context, pack["ref"]["cond.img_context"])


def test_long_image_caption_every_chunk(pack, caption_encoder):
    """A caption of more than two chunks next to a short one (padded to the longest): the ids and the context
    of every 77-token chunk are the reference's (each chunk encoded on its own by the stock CLIP)."""
    tokenizer, text_encoder = caption_encoder.tokenizer, caption_encoder.text_encoder
    short = pack["batch_json"]["img_caption"][1]
    long = pack["batch_json"]["img_caption"][0]
    while len(tokenizer(long, add_special_tokens=False).input_ids) <= 150:
        long += " " + pack["batch_json"]["img_caption"][len(long) % 2]
    size = caption_encoder.chunk_size
    expected = reference_chunks(tokenizer, [long, short], size)
    assert len(expected) >= 3 and len(tokenizer(long, add_special_tokens=False).input_ids) % size
    ids = caption_encoder.tokenize_image_captions([long, short])
    with torch.no_grad():
        context = caption_encoder.encode_image_captions([long, short])
    width = size + 2
    assert ids.shape == (2, width * len(expected)) and context.shape[1] == ids.shape[1]
    for k, chunk in enumerate(expected):
        window = slice(k * width, (k + 1) * width)
        assert torch.equal(ids[:, window], chunk), f"image caption chunk {k}: ids differ"
        with torch.no_grad():
            alone = text_encoder(chunk).last_hidden_state
        assert_close(f"image caption chunk {k} context", context[:, window], alone)
    # chunk 0 of the short caption is the reference's own
    assert torch.equal(expected[0][1], pack["ref"]["cond.img_input_ids"][1])
