"""diffusers layout -> original AnyText2 (ControlLDM) state dict, so trained models run in the reference
code and the tools built on it.

diffusers ships no ldm exporter for UNets, so the forward converters are inverted: a meta-device
checkpoint with the reference layout (``reference_layout``) goes through the very same converters, and
each output tensor is traced back to the ldm key it was made from (converters move or view tensors,
never copy them), which gives the exact key and shape mapping for any configuration.
"""

from __future__ import annotations

import torch

from .original import (
    CLIP_PREFIX,
    EMBEDDING_PREFIX,
    OCR_PREFIX,
    convert_controlnet,
    convert_unet_and_attnx,
    convert_vae,
    diffusers_configs_from_original,
)
from .reference_layout import diffusion_layout

Mapping = dict[str, tuple[str, tuple[int, ...]]]


def _trace(converted: dict[str, torch.Tensor], origin: dict[int, str], layout: dict) -> Mapping:
    mapping: Mapping = {}
    for key, tensor in converted.items():
        root = tensor if tensor._base is None else tensor._base
        if id(root) not in origin:
            raise RuntimeError(f"cannot trace converted key {key} back to a reference key")
        ldm_key = origin[id(root)]
        mapping[key] = (ldm_key, layout[ldm_key])
    return mapping


def diffusers_to_original_mapping(original_config: dict) -> dict[str, Mapping]:
    """Per component (``unet``, ``attnx``, ``controlnet``, ``vae``): diffusers key -> (ldm key, ldm shape)."""
    layout = diffusion_layout(original_config)
    fake = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    origin = {id(t): k for k, t in fake.items()}
    configs = diffusers_configs_from_original(original_config, fake)
    unet_sd, attnx_sd = convert_unet_and_attnx(fake, configs["unet"])
    return {
        "unet": _trace(unet_sd, origin, layout),
        "attnx": _trace(attnx_sd, origin, layout),
        "controlnet": _trace(convert_controlnet(fake, configs["unet"]), origin, layout),
        "vae": _trace(convert_vae(fake, configs["vae"]), origin, layout),
    }


def schedule_buffers(
    linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000
) -> dict[str, torch.Tensor]:
    """The 13 noise-schedule buffers ControlLDM keeps in its state dict (ldm ``register_schedule``,
    ``linear`` schedule = scaled linear in diffusers terms, v_posterior 0, logvar_init 0)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        "logvar": torch.zeros(timesteps, dtype=torch.float64),
    }
    return {k: v.float() for k, v in buffers.items()}


def to_original_state_dict(
    original_config: dict,
    unet,
    attnx,
    controlnet,
    vae,
    text_encoder=None,
    text_embedding=None,
    ocr=None,
) -> dict[str, torch.Tensor]:
    """Assemble the reference ControlLDM state dict from diffusers-layout components."""
    mapping = diffusers_to_original_mapping(original_config)
    out: dict[str, torch.Tensor] = {}
    for name, model in (("unet", unet), ("attnx", attnx), ("controlnet", controlnet), ("vae", vae)):
        state = model.state_dict()
        expected, given = set(mapping[name]), set(state)
        if expected != given:
            missing, extra = sorted(expected - given)[:5], sorted(given - expected)[:5]
            raise ValueError(f"{name}: keys do not fit the original config (missing {missing}, unexpected {extra})")
        for key, (ldm_key, shape) in mapping[name].items():
            out[ldm_key] = state[key].detach().reshape(shape).contiguous()
    if text_encoder is not None:
        for key, value in text_encoder.state_dict().items():
            if key.endswith("position_ids"):
                continue
            bare = key[len("text_model.") :] if key.startswith("text_model.") else key
            out[f"{CLIP_PREFIX}text_model.{bare}"] = value.detach()
    if text_embedding is not None:
        for key, value in text_embedding.state_dict().items():
            out[EMBEDDING_PREFIX + key] = value.detach()
    if ocr is not None:
        for key, value in ocr.state_dict().items():
            out[OCR_PREFIX + key] = value.detach()
    schedule = original_config["model"]["params"]
    out.update(
        schedule_buffers(
            float(schedule.get("linear_start", 0.00085)),
            float(schedule.get("linear_end", 0.012)),
            int(schedule.get("timesteps", 1000)),
        )
    )
    return out
