"""Original AnyText2 checkpoint (ControlLDM state dict) -> diffusers-layout state dicts.

diffusers' single-file helpers convert everything they know (UNet, ControlNet encoder, VAE, CLIP);
only the AnyText2 parts (AttnX, WriteNet's glyph/position/fuse encoders) are mapped here by hand.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
EMBEDDING_PREFIX = "embedding_manager."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."
OCR_PREFIX = "text_predictor."
# Noise-schedule buffers of the LatentDiffusion wrapper: recomputed by diffusers' scheduler.
SCHEDULE_KEYS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
}
PREFIXES = (UNET_PREFIX, CONTROL_PREFIX, EMBEDDING_PREFIX, CLIP_PREFIX, VAE_PREFIX, OCR_PREFIX)
_ATTNX = re.compile(r"\.attn([12])x\.")
# WriteNet's hint encoder keeps the reference's layer indices; only the fuse conv is renamed.
WRITENET_HINT_RENAMES = {
    "glyph_block.": "glyph_block.",
    "position_block.": "position_block.",
    "fuse_block_za.": "fuse_block.",
}


def ldm_block_to_diffusers(path: str, layers_per_block: int) -> str:
    """Map an ldm UNet block path (``input_blocks.4.1``, ``middle_block.1``, ``output_blocks.5.1``) to
    the diffusers attention module that holds the same transformer (``down_blocks.1.attentions.1`` ...)."""
    parts = path.split(".")
    if parts[0] == "middle_block":
        return "mid_block.attentions.0"
    index = int(parts[1])
    if parts[0] == "input_blocks":
        return f"down_blocks.{(index - 1) // (layers_per_block + 1)}.attentions.{(index - 1) % (layers_per_block + 1)}"
    if parts[0] == "output_blocks":
        return f"up_blocks.{index // (layers_per_block + 1)}.attentions.{index % (layers_per_block + 1)}"
    raise ValueError(f"not an ldm UNet block path: {path}")


def convert_unet_and_attnx(
    checkpoint: dict[str, torch.Tensor], unet_config: dict
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split out ``attn1x``/``attn2x`` (AttnX) and convert the remaining stock UNet with diffusers."""
    stock, attnx = {}, {}
    lpb = unet_config["layers_per_block"]
    for key, value in checkpoint.items():
        if not key.startswith(UNET_PREFIX):
            continue
        if _ATTNX.search(key):
            local = key[len(UNET_PREFIX) :]
            block, rest = local.split(".transformer_blocks.", 1)
            attnx[f"{ldm_block_to_diffusers(block, lpb)}.transformer_blocks.{rest}"] = value
        else:
            stock[key] = value
    return convert_ldm_unet_checkpoint(stock, unet_config), attnx


def convert_controlnet(checkpoint: dict[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    """WriteNet = a ControlNet encoder (converted by diffusers) + AnyText2's hint encoder."""
    encoder, hint = {}, {}
    for key, value in checkpoint.items():
        if not key.startswith(CONTROL_PREFIX):
            continue
        local = key[len(CONTROL_PREFIX) :]
        for old, new in WRITENET_HINT_RENAMES.items():
            if local.startswith(old):
                hint[new + local[len(old) :]] = value
                break
        else:
            encoder[key] = value
    converted = convert_controlnet_checkpoint(encoder, unet_config)
    converted = {k: v for k, v in converted.items() if v is not None}
    converted.update(hint)
    return converted


def convert_vae(checkpoint: dict[str, torch.Tensor], vae_config: dict) -> dict[str, torch.Tensor]:
    return convert_ldm_vae_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)}, vae_config)


def convert_text_encoder(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    clip = {k: v for k, v in checkpoint.items() if k.startswith(CLIP_PREFIX)}
    return convert_ldm_clip_checkpoint(clip, remove_prefix=CLIP_PREFIX)


def strip_prefix(checkpoint: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}


def block_configs_from_original(original_config: dict, n_levels: int, down_block_types) -> dict[str, dict]:
    """WriteNet (``controlnet``) and AttnX settings of the reference's model yaml, for a UNet with ``n_levels``
    resolution levels and these down block types."""
    params = original_config["model"]["params"]
    control = params.get("control_stage_config", {}).get("params", {})
    unet_params = params["unet_config"]["params"]
    controlnet = dict(
        glyph_scale=int(control.get("glyph_scale", 1)),
        fast_control=bool(control.get("fast_control", True)),
        glyph_channels=int(control.get("glyph_channels", 1)),
        position_channels=int(control.get("position_channels", 1)),
    )
    attnx = dict(
        in_mid_block=bool(unet_params.get("mid_attnx", False)),
        in_up_blocks=tuple(sorted(n_levels - 1 - level for level in unet_params.get("output_attnx_level", ())))
        if unet_params.get("output_attnx", False)
        else (),
        in_down_blocks=tuple(i for i, t in enumerate(down_block_types) if "CrossAttn" in t)
        if unet_params.get("input_attnx", False)
        else (),
    )
    return dict(controlnet=controlnet, attnx=attnx)


def diffusers_configs_from_original(original_config: dict, checkpoint: dict[str, torch.Tensor]) -> dict[str, dict]:
    """UNet / VAE / WriteNet (``controlnet``) / AttnX configs from the reference's model yaml (already parsed)."""
    unet = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet.pop("sample_size", None)
    vae = create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    blocks = block_configs_from_original(original_config, len(unet["block_out_channels"]), unet["down_block_types"])
    return dict(unet=unet, vae=vae, **blocks)


def load_text_encoder_weights(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Load converted CLIP weights whatever the installed transformers calls the root module
    (v4 nests everything under ``text_model.``, v5 does not)."""
    nested = any(k.startswith("text_model.") for k in model.state_dict())
    fixed = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        bare = key[len("text_model.") :] if key.startswith("text_model.") else key
        fixed["text_model." + bare if nested else bare] = value
    model.load_state_dict(fixed, strict=True)


def upcast_floats(state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _with_prefix(checkpoint, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``: read now from a ``LazyStateDict``, or picked from a loaded dict."""
    if hasattr(checkpoint, "with_prefix"):
        return checkpoint.with_prefix(prefix)
    return {k: v for k, v in checkpoint.items() if k.startswith(prefix)}


def convert_diffusion_models(checkpoint, original_config: dict, emit) -> None:
    """UNet (stock), AttnX, WriteNet and VAE with the checkpoint's weights, strictly loaded, one at a time:
    each is built from only its own source tensors and handed to ``emit(name, model)``, then released, so
    peak memory is one float32 model and its source, not the whole checkpoint (``--from_original``)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..models import AnyText2AttnXModel, AnyText2ControlNetModel

    configs = diffusers_configs_from_original(original_config, checkpoint)
    unet = UNet2DConditionModel(**configs["unet"])
    unet_sd, attnx_sd = convert_unet_and_attnx(_with_prefix(checkpoint, UNET_PREFIX), configs["unet"])
    unet.load_state_dict(unet_sd, strict=True)  # copy_ casts half-precision sources to float32
    del unet_sd
    emit("unet", unet.eval())
    del unet
    with init_empty_weights():  # AttnX / WriteNet read only the UNet's config
        skeleton = UNet2DConditionModel(**configs["unet"])
    attnx = AnyText2AttnXModel.from_unet(skeleton, **configs["attnx"], load_weights_from_unet=False)
    attnx.load_state_dict(attnx_sd, strict=True)
    del attnx_sd
    emit("attnx", attnx.eval())
    del attnx
    controlnet_cfg = configs["controlnet"]
    controlnet = AnyText2ControlNetModel.from_unet(
        skeleton,
        glyph_scale=controlnet_cfg["glyph_scale"],
        fast_control=controlnet_cfg["fast_control"],
        load_weights_from_unet=False,
    )
    controlnet.load_state_dict(
        convert_controlnet(_with_prefix(checkpoint, CONTROL_PREFIX), configs["unet"]), strict=True
    )
    emit("controlnet", controlnet.eval())
    del controlnet
    vae = AutoencoderKL(**configs["vae"])
    vae.load_state_dict(convert_vae(_with_prefix(checkpoint, VAE_PREFIX), configs["vae"]), strict=True)
    emit("vae", vae.eval())


def build_diffusion_models(checkpoint: dict[str, torch.Tensor], original_config: dict) -> dict:
    """UNet (stock), AttnX, WriteNet and VAE with the checkpoint's weights, strictly loaded, all kept."""
    parts = {}
    convert_diffusion_models(checkpoint, original_config, parts.__setitem__)
    return parts
