"""Stable Diffusion 1.5 -> a fresh AnyText2 for training from scratch (the reference's tool_add_anytext.py).

WriteNet's encoder and AttnX start as copies of the UNet's weights (``from_unet``), the zero convs and the
fuse conv at zero, the glyph/position encoders random. The OCR and text-embedding parts are added by the
caller (they need the recognizer weights).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..configs import config_path, sd15_config
from ..utils.checkpoint_io import load_state_dict_file
from .original import (
    convert_text_encoder,
    convert_unet_and_attnx,
    convert_vae,
    diffusers_configs_from_original,
    load_text_encoder_weights,
)


def default_original_config() -> dict:
    with open(config_path("anytext2_sd15.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


SHIPPED_ORIGINAL_CONFIGS = {"sd15": "anytext2_sd15.yaml", "tiny": "anytext2_tiny.yaml"}


def load_original_config(path: str | Path | None) -> dict:
    """The reference model yaml: a file, a shipped one by name (``sd15``, the default, or ``tiny`` for
    ``testing.tiny_components``), or None for SD1.5."""
    if path is None:
        return default_original_config()
    if str(path) in SHIPPED_ORIGINAL_CONFIGS and not Path(path).exists():
        path = config_path(SHIPPED_ORIGINAL_CONFIGS[str(path)])
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the original model config ({err})") from err
    if not isinstance(cfg, dict) or "unet_config" not in cfg.get("model", {}).get("params", {}):
        raise ValueError(f"{path}: not a ControlLDM config (model.params.unet_config missing)")
    return cfg


def load_sd15_components(
    path: str | Path,
    original_config: dict | None = None,
    clip_model_name_or_path: str | Path | None = None,
) -> dict:
    """UNet, VAE, text encoder, tokenizer (and scheduler when present) from a diffusers SD1.5 folder or a
    single-file ldm checkpoint (``.safetensors`` / ``.ckpt``; tokenizer and CLIP config come from
    ``clip_model_name_or_path``, since single files carry none)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if path.is_dir():
        parts = dict(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet"),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        )
        if (path / "scheduler").is_dir():
            parts["scheduler"] = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        return parts

    checkpoint = load_state_dict_file(path)
    sd_config = copy.deepcopy(original_config or default_original_config())
    unet_params = sd_config["model"]["params"]["unet_config"]["params"]
    for flag in ("input_attnx", "mid_attnx", "output_attnx"):
        unet_params[flag] = False  # a plain SD1.5 UNet
    configs = diffusers_configs_from_original(sd_config, checkpoint)
    unet = UNet2DConditionModel(**configs["unet"])
    unet_sd, attnx_sd = convert_unet_and_attnx(checkpoint, configs["unet"])
    if attnx_sd:
        raise ValueError(f"{path}: holds AttnX weights; convert it with --from_original instead")
    unet.load_state_dict(unet_sd, strict=True)
    vae = AutoencoderKL(**configs["vae"])
    vae.load_state_dict(convert_vae(checkpoint, configs["vae"]), strict=True)
    if clip_model_name_or_path is None:
        raise ValueError("a single-file checkpoint needs --clip_model_name_or_path for the tokenizer and CLIP config")
    clip_dir = Path(clip_model_name_or_path)
    sub = clip_dir / "text_encoder" if (clip_dir / "text_encoder").is_dir() else clip_dir
    tok = clip_dir / "tokenizer" if (clip_dir / "tokenizer").is_dir() else clip_dir
    text_config = (
        CLIPTextConfig.from_pretrained(sub)
        if (sub / "config.json").is_file()
        else CLIPTextConfig(**{k: v for k, v in sd15_config("text_encoder").items() if k != "architectures"})
    )
    text_encoder = CLIPTextModel(text_config)
    load_text_encoder_weights(text_encoder, convert_text_encoder(checkpoint))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tok))


def init_anytext2_blocks(unet, original_config: dict | None = None) -> dict:
    """WriteNet and AttnX for ``unet`` with the reference's initialisation and the config's placement."""
    from ..models import AnyText2AttnXModel, AnyText2ControlNetModel

    cfg = original_config or default_original_config()
    params = cfg["model"]["params"]
    control = params.get("control_stage_config", {}).get("params", {})
    unet_params = params["unet_config"]["params"]
    n_levels = len(unet.config.block_out_channels)
    writenet = AnyText2ControlNetModel.from_unet(
        unet, glyph_scale=int(control.get("glyph_scale", 1)), fast_control=bool(control.get("fast_control", True))
    )
    attnx = AnyText2AttnXModel.from_unet(
        unet,
        in_mid_block=bool(unet_params.get("mid_attnx", True)),
        in_up_blocks=tuple(sorted(n_levels - 1 - int(lv) for lv in unet_params.get("output_attnx_level", (2, 1))))
        if unet_params.get("output_attnx", True)
        else (),
        in_down_blocks=tuple(i for i, t in enumerate(unet.config.down_block_types) if "CrossAttn" in t)
        if unet_params.get("input_attnx", False)
        else (),
    )
    return dict(controlnet=writenet, attnx=attnx)
