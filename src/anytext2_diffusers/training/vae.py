"""Train a small ``AutoencoderKL`` (latent = image / 8, 4 channels, as SD) on a folder of images.

The AnyText2 loop keeps the VAE frozen, so a model trained from scratch needs an autoencoder first;
if text is not legible after encode/decode nothing trained on its latents can write. Losses: MSE (or L1, as SD)
on the pixels plus an L1 on image gradients (keeps strokes sharp; a stand-in for SD's perceptual loss, which needs
pretrained weights), and SD's small KL weight. Random square crops (the model is convolutional)
make a step cheap. Resumable: one atomic ``checkpoint.pt`` (weights, optimizer, step) and per-step
seeds, so a resumed run draws the same crops and posterior samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from .stage_checkpoint import (
    CHECKPOINT,
    check_config,
    first_difference,
    log_window,
    plain_config,
    resume,
    save,
    trim_log,
)

logger = logging.getLogger(__name__)

CONFIG_KEY = "vae_config"  # the model config's key in checkpoint.pt


@dataclass
class VAETrainingConfig:
    output_dir: str
    train_data: list = field(default_factory=list)  # AnyWord JSON files (their images are the data)
    resolution: int = 128
    crop: int = 64
    batch_size: int = 16
    learning_rate: float = 5e-4
    max_train_steps: int = 3000
    checkpointing_steps: int = 50
    logging_steps: int = 10
    seed: int = 0
    kl_weight: float = 1e-6
    edge_weight: float = 1.0
    # "mse" or "l1" on the pixels (the edge term is L1 either way). SD's VAE uses L1, but trained from scratch
    # the tiny VAE under L1 stalls with a wrong colour per image (sign gradients pull each pixel alike, large and
    # small errors equally); under MSE the same probe learned the images' mean colour at once (docs/demo_model.md).
    pixel_loss: str = "mse"
    block_out_channels: tuple = (32, 32, 64, 64)
    layers_per_block: int = 2
    # GroupNorm groups. 32 groups on the tiny VAE's 32-channel levels normalise every channel of every crop
    # on its own (instance norm): each channel's mean and scale over the crop are removed before the output
    # conv, and the reconstructions came out grey (docs/demo_model.md). 8 groups keep 4 channels per group.
    norm_num_groups: int = 8
    # 4 as SD. More channels carry more letter shape at latent = image / 8 (docs/demo_model.md); the AnyText2
    # stage of the demo recipe is built for 4 (the tiny UNet's in/out and WriteNet's masked-latent channels).
    latent_channels: int = 4
    # Start from this trained VAE (a save_pretrained folder of the same architecture) instead of random weights.
    init_from: str | None = None
    # False trains the decoder only: the encoder (and quant_conv) stay as loaded, so the latents, and every
    # diffusion model trained on them, stay valid (how Stability fine-tuned SD's VAE into sd-vae-ft-mse).
    train_encoder: bool = True


def vae_config(config: VAETrainingConfig) -> dict:
    from ..testing import tiny_vae_config

    cfg = tiny_vae_config()
    cfg.update(
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        latent_channels=config.latent_channels,
    )
    cfg["sample_size"] = config.resolution
    return cfg


def load_images(json_paths, resolution: int, limit: int | None = None) -> torch.Tensor:
    """The images of AnyWord JSON files (the first ``limit``) as one (N, 3, R, R) uint8 tensor, resized if needed."""
    images = []
    for path in json_paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        root = os.path.join(os.path.dirname(path), data.get("data_root", ""))
        for i, rec in enumerate(data["data_list"][:limit]):
            file = os.path.join(root, rec["img_name"])
            try:
                with Image.open(file) as im:
                    im = im.convert("RGB")
                    if im.size != (resolution, resolution):
                        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
                    images.append(np.asarray(im))
            except OSError as err:
                raise ValueError(f"{path}: record {i} field img_name={rec['img_name']!r}: {err}") from None
    if not images:
        raise ValueError(f"no images in {list(json_paths)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _batch(images: torch.Tensor, config: VAETrainingConfig, generator: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(images), (config.batch_size,), generator=generator)
    hi = images.shape[-1] - config.crop
    xy = torch.randint(hi + 1, (config.batch_size, 2), generator=generator)
    crops = [images[i, :, y : y + config.crop, x : x + config.crop] for i, (x, y) in zip(idx.tolist(), xy.tolist())]
    return torch.stack(crops).float() / 127.5 - 1


def _gradients(x: torch.Tensor) -> tuple:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, config: VAETrainingConfig, generator: torch.Generator) -> dict:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    l1 = F.l1_loss(recon, x)
    if config.pixel_loss == "mse":
        pixel = F.mse_loss(recon, x)
    elif config.pixel_loss == "l1":
        pixel = l1
    else:
        raise ValueError(f"VAETrainingConfig.pixel_loss must be 'mse' or 'l1', got {config.pixel_loss!r}")
    edge = sum(F.l1_loss(a, b) for a, b in zip(_gradients(recon), _gradients(x)))
    kl = posterior.kl().mean()  # summed over the latent, as SD; its weight is relative to a per-pixel sum
    total = pixel + config.edge_weight * edge + config.kl_weight * kl / x[0].numel()
    return dict(loss=total, l1=l1.detach(), edge=edge.detach(), kl=kl.detach())


def check_checkpoint_config(path: str, state: dict, vae: AutoencoderKL) -> None:
    """Refuse a VAE checkpoint written with another architecture setting (``stage_checkpoint.check_config``)."""
    check_config(path, state, vae, CONFIG_KEY)


def _encoder_parameters(vae: AutoencoderKL) -> list:
    return [*vae.encoder.parameters(), *vae.quant_conv.parameters()]


def _initial_vae(config: VAETrainingConfig) -> AutoencoderKL:
    if not config.train_encoder and not config.init_from:
        raise ValueError("VAETrainingConfig.train_encoder=False needs init_from (a trained encoder to keep)")
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**vae_config(config))
    if config.init_from:
        trained = AutoencoderKL.from_pretrained(config.init_from)
        saved, wanted = plain_config(trained), plain_config(vae)
        wanted = {k: wanted.get(k) for k in saved}  # fields the saved config records
        key = first_difference(saved, wanted, ignore=("scaling_factor",))  # init sets the factor later
        if key is not None:
            field = f"{config.init_from}: field config.json {key}"
            raise ValueError(f"{field} is {saved[key]!r}, this run's VAE has {wanted[key]!r}")
        vae.load_state_dict(trained.state_dict())
    if not config.train_encoder:
        for p in _encoder_parameters(vae):
            p.requires_grad_(False)
    return vae


def train_vae(config: VAETrainingConfig, images: torch.Tensor | None = None) -> dict:
    """Train (or resume) to ``max_train_steps``; writes ``vae/`` (save_pretrained) and ``log.jsonl``."""
    os.makedirs(config.output_dir, exist_ok=True)
    if images is None:
        images = load_images(config.train_data, config.resolution)
    vae = _initial_vae(config)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    ckpt_path = os.path.join(config.output_dir, CHECKPOINT)
    step, wall = resume(config.output_dir, vae, optimizer, CONFIG_KEY)
    if step:
        logger.info("resumed the VAE at step %d", step)
    vae.train()
    log_path = os.path.join(config.output_dir, "log.jsonl")
    trim_log(log_path, step)
    window: list = []
    start = time.perf_counter() - wall
    while step < config.max_train_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        losses = vae_loss(vae, _batch(images, config, generator), config, generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        step += 1
        window.append({k: v.item() for k, v in losses.items()})
        if step % config.logging_steps == 0 or step == config.max_train_steps:
            logger.info("vae %s", log_window(log_path, window, step, time.perf_counter() - start))
            window = []
        if step % config.checkpointing_steps == 0 or step == config.max_train_steps:
            save(ckpt_path, vae, optimizer, step, time.perf_counter() - start, CONFIG_KEY)
    vae.eval()
    vae.save_pretrained(os.path.join(config.output_dir, "vae"))
    with open(os.path.join(config.output_dir, "vae_training.json"), "w", encoding="utf-8") as f:
        json.dump(dict(asdict(config), steps=step, wall_s=round(time.perf_counter() - start, 1)), f, indent=1)
    return dict(steps=step, wall_s=round(time.perf_counter() - start, 1), vae=vae)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, seed: int = 0, batch_size: int = 16) -> float:
    """1 / std of the posterior samples of ``images``: the ``scaling_factor`` that gives the diffusion model
    unit-variance latents (how SD's 0.18215 was chosen for its VAE)."""
    generator = torch.Generator().manual_seed(seed)
    latents = [vae.encode(c.float() / 127.5 - 1).latent_dist.sample(generator) for c in images.split(batch_size)]
    return 1.0 / float(torch.cat(latents).std())


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 reconstructions through the posterior mode (what a generated latent decodes as)."""
    out = []
    for chunk in images.split(batch_size):
        x = chunk.float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)
