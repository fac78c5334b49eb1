"""AnyText2Pipeline on the tiny components: outputs, determinism, batching, edit mode, fast control, save/load."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file

from anytext2_diffusers import AnyText2ControlNetModel, AnyText2Pipeline
from anytext2_diffusers.pipelines import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT
from anytext2_diffusers.testing import tiny_pipeline

S = 64  # image size: latent 8x8, the smallest the UNet's three downsamplings allow


pytestmark = pytest.mark.usefixtures("one_thread")


def two_line_mask(size=S):
    mask = np.zeros((size, size), np.uint8)
    mask[6:22, 6:58] = 255
    mask[38:56, 10:54] = 255
    return mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def call(pipe, **kw):
    args = dict(prompt="a shop sign", texts=["Hello", "World"], positions=two_line_mask(), num_inference_steps=2)
    args.update(kw)
    return pipe(**args)


class CountCalls:
    """Counts forward calls of a module (a pre-hook: nothing about the call changes)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.n += 1

    def close(self):
        self.handle.remove()


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------
def test_output_shapes_and_types(pipe):
    out = call(pipe, generator=gen(), output_type="np", num_images_per_prompt=2)
    assert out.images.shape == (2, S, S, 3) and out.images.dtype == np.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    pil = call(pipe, generator=gen(), output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (S, S)
    polygons = [np.array([[6, 6], [58, 6], [58, 22], [6, 22]]), np.array([[10, 80], [54, 80], [54, 100], [10, 100]])]
    lat = call(pipe, generator=gen(), output_type="latent", height=128, width=64, positions=polygons)
    assert lat.images.shape == (1, 4, 16, 8)
    lat = call(pipe, generator=gen(), output_type="latent", positions=np.pad(two_line_mask(), ((0, 64), (0, 0))))
    assert lat.images.shape == (1, 4, 16, 8)  # the size follows the mask when height/width are not given
    (images,) = call(pipe, generator=gen(), output_type="pt", return_dict=False)
    assert images.shape == (1, 3, S, S)


def test_determinism_with_generator(pipe):
    a = call(pipe, generator=gen(1), output_type="np").images
    b = call(pipe, generator=gen(1), output_type="np").images
    c = call(pipe, generator=gen(2), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_batch_of_prompts_equals_single_calls(pipe):
    prompts = ["a shop sign", "a poster on a brick wall"]
    both = call(pipe, prompt=prompts, generator=[gen(3), gen(4)], output_type="np").images
    one = call(pipe, prompt=prompts[0], generator=gen(3), output_type="np").images
    two = call(pipe, prompt=prompts[1], generator=gen(4), output_type="np").images
    assert both.shape == (2, S, S, 3)
    np.testing.assert_allclose(both[0], one[0], atol=1e-3)  # batched matmuls round differently (< 1/4 of a uint8 step)
    np.testing.assert_allclose(both[1], two[0], atol=1e-3)
    assert np.abs(both[0] - both[1]).max() > 1e-2


def test_conditions_reach_the_image(pipe):
    """Texts, WriteNet strength, AttnX scale and guidance all change the result (the tests above can fail)."""
    base = call(pipe, generator=gen(), output_type="latent").images
    for kw in ({"texts": ["Goodbye", "World"]}, {"strength": 0.0}, {"attnx_scale": 0.0}, {"guidance_scale": 1.0}):
        other = call(pipe, generator=gen(), output_type="latent", **kw).images
        assert (other - base).abs().max() > 1e-4, kw


def test_quoted_lines_in_prompt(pipe):
    a = pipe(
        prompt='a sign that reads "Hello", "World"',
        positions=two_line_mask(),
        num_inference_steps=2,
        generator=gen(),
        output_type="latent",
    ).images
    batch, _ = pipe.prepare_conditions('a sign that reads "Hello", "World"', positions=two_line_mask())
    assert batch.text[0][:2] == ["Hello", "World"] and batch.image_caption == ["a sign that reads *, *"]
    assert a.shape == (1, 4, 8, 8)


def test_any_scheduler(pipe):
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    other = AnyText2Pipeline(**{**pipe.components, "scheduler": euler})
    other.set_progress_bar_config(disable=True)
    out = call(other, generator=gen(), output_type="np").images
    assert np.isfinite(out).all() and out.shape == (1, S, S, 3)
    assert pipe.attnx.attached_unet is pipe.unet  # a second pipeline on the same modules keeps AttnX attached once


def test_callback_on_step_end(pipe):
    steps = []

    def cb(p, i, t, kw):
        steps.append(int(t))
        return {"latents": torch.zeros_like(kw["latents"])} if i == 2 else kw

    out = call(pipe, generator=gen(), num_inference_steps=3, output_type="latent", callback_on_step_end=cb).images
    assert len(steps) == 3 and steps == sorted(steps, reverse=True)
    assert torch.count_nonzero(out) == 0  # the callback's latents were used


# --------------------------------------------------------------------------------------------------------
# edit mode
# --------------------------------------------------------------------------------------------------------
def edit_inputs(size=S):
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[24:40, 8:56] = 255
    return image, mask


def edit(pipe, image, mask, **kwargs):
    """One 3-step edit call writing "Hi" into ``mask``."""
    return pipe(
        prompt="x",
        texts=["Hi"],
        positions=mask,
        mode="edit",
        image=image,
        num_inference_steps=3,
        generator=gen(),
        **kwargs,
    ).images


def test_edit_keeps_unmasked_latents_exactly_when_asked(pipe):
    """``keep_unmasked_area=True`` (not the reference default) keeps the latents outside the lines."""
    image, mask = edit_inputs()
    lat = edit(pipe, image, mask, output_type="latent", keep_unmasked_area=True)
    batch, _ = pipe.prepare_conditions("x", texts=["Hi"], positions=mask, mode="edit", image=image)
    image_latents = pipe.encode_vae(batch.image_float())
    inside = F.max_pool2d(torch.from_numpy(mask > 0).float()[None, None], 8).bool().expand_as(lat)
    assert (lat - image_latents)[~inside].abs().max() == 0
    assert (lat - image_latents)[inside].abs().max() > 0.1  # the lines are regenerated


def test_edit_preserves_pixels_up_to_vae_round_trip(pipe):
    """Measured on the tiny random VAE, whose decoder couples every pixel (GroupNorm statistics, mid-block
    attention), so a change inside the lines moves pixels everywhere and only a relative bound is meaningful:
    outside the lines the result is closer to the VAE round trip than the reference behaviour (conditioning
    only) is. The exact guarantee is in latent space (the test above)."""
    image, mask = edit_inputs()
    batch, _ = pipe.prepare_conditions("x", texts=["Hi"], positions=mask, mode="edit", image=image)
    with torch.no_grad():
        rt = pipe.vae.decode(pipe.encode_vae(batch.image_float()) / pipe.vae.config.scaling_factor).sample
    rt = (rt[0].permute(1, 2, 0).numpy() / 2 + 0.5).clip(0, 1)
    outside = mask == 0
    errs = {}
    for keep in (True, False):
        out = edit(pipe, image, mask, output_type="np", keep_unmasked_area=keep)[0]
        errs[keep] = np.abs(out - rt)[outside].mean()
    assert errs[True] < 0.9 * errs[False], errs  # measured 0.135 vs 0.156 (mean |out - round trip|)


def test_edit_size_follows_image(pipe):
    image = np.full((100, 150, 3), 128, np.uint8)
    mask = np.zeros((100, 150), np.uint8)
    mask[30:70, 20:130] = 255
    batch, _ = pipe.prepare_conditions("x", texts=["Hi"], positions=mask, mode="edit", image=image)
    assert tuple(batch.image.shape[-2:]) == (64, 128)  # cut down to multiples of 64
    assert batch.position[0, 0, 0].any() and bool(batch.edit_mode[0])
    assert (batch.masked_image[0][:, batch.position[0, 0, 0]] == 0).all()


# --------------------------------------------------------------------------------------------------------
# fast control
# --------------------------------------------------------------------------------------------------------
def reference_loop(pipe, batch, steps, guidance_scale, generator, strength=1.0, attnx_scale=1.0):
    """The reference's sampler written out: every step runs WriteNet on the current latent and timestep,
    then the UNet, conditional branch first, then the unconditional one."""
    line_embeds, n_lines = pipe.encode_lines(batch)
    captions = [f"{c}, {DEFAULT_ADDED_PROMPT}" for c in batch.image_caption]
    image_ctx, text_ctx = pipe.encode_prompt(captions, batch.text_caption, line_embeds, n_lines)
    uncond_ctx, uncond_text_ctx = pipe.encode_prompt([DEFAULT_NEGATIVE_PROMPT], [""])
    glyphs, positions = batch.glyphs.float(), batch.position[:, :, 0].float()
    masked = pipe.encode_vae(batch.masked_image_float())
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    H, W = batch.image.shape[-2:]
    latents = randn_tensor((1, 4, H // 8, W // 8), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = []
        for ctx, tctx in ((image_ctx, text_ctx), (uncond_ctx, uncond_text_ctx)):
            down, mid = pipe.controlnet(latents, t, tctx, glyphs, positions, masked, strength, return_dict=False)
            eps.append(
                pipe.unet(
                    latents,
                    t,
                    encoder_hidden_states=ctx,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    cross_attention_kwargs={"attnx_scale": attnx_scale},
                ).sample
            )
        latents = scheduler.step(eps[1] + guidance_scale * (eps[0] - eps[1]), t, latents).prev_sample
    return latents


@torch.no_grad()
def test_overlapping_lines_reach_writenet_summed(pipe):
    """WriteNet gets the per-line masks and sums them, as in training and the reference (cldm sums
    ``text_info['positions']``): where two lines overlap its position input is 2, not their union's 1."""
    polys = [np.array([[4, 4], [60, 4], [60, 30], [4, 30]]), np.array([[4, 20], [60, 20], [60, 50], [4, 50]])]
    seen = []
    handle = pipe.controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("positions", args[4] if len(args) > 4 else None)),
        with_kwargs=True,
    )
    try:
        call(pipe, generator=gen(), output_type="latent", positions=polys, height=S, width=S)
    finally:
        handle.remove()
    positions = seen[0]
    assert positions.shape[1] == 2  # one channel per line
    assert positions.sum(dim=1).max().item() == 2.0  # the overlap counts twice
    hint = pipe.controlnet.encode_hint
    union = positions.amax(dim=1, keepdim=True)
    masked = torch.zeros(positions.shape[0], 4, S // 8, S // 8)
    g = S * pipe.controlnet.config.glyph_scale
    glyphs = torch.zeros(positions.shape[0], 1, g, g)
    assert not torch.allclose(hint(glyphs, positions, masked), hint(glyphs, union, masked))


@torch.no_grad()
def test_writenet_runs_twice_for_20_steps_and_matches_per_step_loop(pipe):
    kw = dict(num_inference_steps=20, guidance_scale=7.5, output_type="latent")
    counter = CountCalls(pipe.controlnet)
    try:
        fast = call(pipe, generator=gen(5), **kw).images
        assert counter.n == 2  # conditional + unconditional, whatever the number of steps
        counter.n = 0
        batch, _ = pipe.prepare_conditions("a shop sign", texts=["Hello", "World"], positions=two_line_mask())
        ref = reference_loop(pipe, batch, 20, 7.5, gen(5))
        assert counter.n == 40
        counter.n = 0
        pipe.recompute_controlnet_every_step = True  # the benchmark's baseline: same loop, WriteNet every step
        per_step = call(pipe, generator=gen(5), **kw).images
        assert counter.n == 40
        counter.n = 0
        no_cfg = call(pipe, generator=gen(5), num_inference_steps=20, guidance_scale=1.0, output_type="latent")
        assert counter.n == 20
        del no_cfg
    finally:
        pipe.recompute_controlnet_every_step = False
        counter.close()
    assert (fast - ref).abs().max() <= 1e-5
    assert (fast - per_step).abs().max() <= 1e-5
    assert fast.abs().max() > 0.1


def test_writenet_without_fast_control_runs_every_step(pipe):
    slow_net = AnyText2ControlNetModel.from_config({**pipe.controlnet.config, "fast_control": False})
    slow_net.load_state_dict(pipe.controlnet.state_dict())
    slow = AnyText2Pipeline(**{**pipe.components, "controlnet": slow_net})
    slow.set_progress_bar_config(disable=True)
    counter = CountCalls(slow_net)
    try:
        call(slow, generator=gen(), num_inference_steps=3, output_type="latent")
    finally:
        counter.close()
    assert counter.n == 6


# --------------------------------------------------------------------------------------------------------
# save / load / offload
# --------------------------------------------------------------------------------------------------------
def test_save_pretrained_from_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # diffusers writes the defining module of classes from other libraries and imports it when loading; it
    # also looks the loadable base classes (ModelMixin ...) up in that module, so the bare package name would
    # not load
    assert index["controlnet"] == ["anytext2_diffusers.models.controlnet", "AnyText2ControlNetModel"]
    assert index["attnx"] == ["anytext2_diffusers.models.attnx", "AnyText2AttnXModel"]
    assert index["_class_name"] == "AnyText2Pipeline"
    for sub in (
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "controlnet",
        "attnx",
        "text_embedding",
        "ocr",
        "scheduler",
    ):
        assert (tmp_path / sub).is_dir(), sub
    # the UNet folder holds a stock SD UNet: exactly its keys, no AttnX
    unet_keys = set(load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet_keys == set(UNet2DConditionModel(**pipe.unet.config).state_dict())

    loaded = AnyText2Pipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.attnx.attached_unet is loaded.unet
    assert isinstance(loaded.scheduler, DDIMScheduler)
    a = call(pipe, generator=gen(), output_type="latent").images
    b = call(loaded, generator=gen(), output_type="latent").images
    for name, module in pipe.components.items():  # every weight comes back
        if isinstance(module, torch.nn.Module):
            ref, got = module.state_dict(), loaded.components[name].state_dict()
            assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name
    # not bit-identical: transformers picks SDPA attention for a loaded CLIP, eager for one built from a config
    assert (a - b).abs().max() <= 1e-4


def test_folders_saved_before_the_controlnet_rename_still_load(pipe, tmp_path):
    """Folders written while the model lived in models/writenet.py name that module in model_index.json."""
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["controlnet"] = ["anytext2_diffusers.models.writenet", "AnyText2ControlNetModel"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    loaded = AnyText2Pipeline.from_pretrained(tmp_path)
    assert type(loaded.controlnet) is type(pipe.controlnet)
    ref, got = pipe.controlnet.state_dict(), loaded.controlnet.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_model_cpu_offload_runs():
    """No accelerator here: offloading 'to' cpu:0 still installs accelerate's hooks on every component."""
    pipe = tiny_pipeline(seed=0)
    a = call(pipe, generator=gen(), output_type="latent").images
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device == torch.device("cpu", 0) or pipe._execution_device.type == "cpu"
    b = call(pipe, generator=gen(), output_type="latent").images
    assert (a - b).abs().max() <= 1e-6
    hooked = [name for name, m in pipe.components.items() if hasattr(m, "_hf_hook")]
    assert {"unet", "controlnet", "vae", "text_encoder"} <= set(hooked) and "attnx" not in hooked
