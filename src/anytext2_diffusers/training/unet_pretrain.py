"""Pretrain a small ``UNet2DConditionModel`` as a plain text-to-image diffusion model (every parameter trained).

AnyText2 fine-tunes a *pretrained* SD1.5: with ``--no-sd_locked`` only the UNet's decoder trains, and its
encoder, mid block and time embedding stay SD's weights. A model built from scratch has no such base: with
a random, frozen encoder the AnyText2 loop learns noise prediction about half as fast (docs/demo_model.md,
the UNet probe). This stage gives the demo recipe its "SD": noise prediction (or v) on the VAE latents of the
training images, conditioned on their captions through the frozen text encoder, a share of captions
dropped to the empty prompt as SD does for classifier-free guidance.

The latents' posterior (mean, std) and the captions' hidden states are computed once; each step draws its
images, posterior samples, timesteps and noise from a generator seeded by the step, so a resumed run is
the same run. Resumable from one atomic ``checkpoint.pt`` (``stage_checkpoint``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .losses import training_target
from .stage_checkpoint import CHECKPOINT, log_window, resume, save, trim_log

logger = logging.getLogger(__name__)

CONFIG_KEY = "unet_config"  # the model config's key in checkpoint.pt


@dataclass
class UNetPretrainConfig:
    output_dir: str
    train_data: list = field(default_factory=list)  # AnyWord JSON files: their images and captions
    resolution: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-4
    max_train_steps: int = 4000
    checkpointing_steps: int = 100
    logging_steps: int = 25
    seed: int = 0
    # Share of captions replaced by the empty prompt (SD: 0.1), so that classifier-free guidance has an
    # unconditional model to push away from.
    caption_dropout: float = 0.1
    device: str = "cpu"


def load_captions(json_paths, limit: int | None = None) -> list[str]:
    """The captions of AnyWord JSON files, in ``training.vae.load_images``' order (a missing one is '')."""
    captions = []
    for path in json_paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        captions += [rec.get("caption") or "" for rec in data["data_list"][:limit]]
    return captions


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> the VAE posterior's (mean, std), each (N, C, H/8, W/8), on the CPU."""
    means, stds = [], []
    for chunk in images.split(batch_size):
        dist = vae.encode(chunk.to(device).float() / 127.5 - 1).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states of each distinct caption, index of each caption into them); row 0 is the empty prompt."""
    distinct = [""] + sorted(set(captions) - {""})
    row = {c: i for i, c in enumerate(distinct)}
    states = []
    for start in range(0, len(distinct), 256):
        ids = tokenizer(
            distinct[start : start + 256],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        states.append(text_encoder(ids.to(device))[0].cpu())
    return torch.cat(states), torch.tensor([row[c] for c in captions])


def diffusion_loss(unet, scheduler, latents, context, generator: torch.Generator) -> torch.Tensor:
    """SD's training loss on scaled latents: noise at a uniform timestep, MSE to the scheduler's target (the
    noise, or v), as the AnyText2 loop's ``training_target`` defines it."""
    n = len(latents)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (n,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = training_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, target)


def pretrain_unet(
    config: UNetPretrainConfig, parts: dict, images: torch.Tensor | None = None, captions: list[str] | None = None
) -> dict:
    """Train (or resume) ``parts['unet']`` to ``max_train_steps``; ``parts`` also holds the frozen ``vae``
    (its ``scaling_factor`` set), ``text_encoder``, ``tokenizer`` and the training ``scheduler``. ``images``
    (uint8 N x 3 x H x W) and ``captions`` default to those of ``config.train_data``. Writes ``unet/``
    (save_pretrained), ``log.jsonl`` and ``unet_pretrain.json`` into ``output_dir``."""
    from .vae import load_images

    os.makedirs(config.output_dir, exist_ok=True)
    device = torch.device(config.device)
    if images is None:
        images = load_images(config.train_data, config.resolution)
    if captions is None:
        captions = load_captions(config.train_data)
    if len(captions) != len(images):
        raise ValueError(f"{config.train_data}: {len(images)} images but {len(captions)} captions")
    unet, vae, text_encoder, scheduler = parts["unet"], parts["vae"], parts["text_encoder"], parts["scheduler"]
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval().to(device)
    mean, std = encode_latents(vae, images, device)
    states, caption_row = encode_captions(text_encoder, parts["tokenizer"], captions, device)
    mean, std, states = mean.to(device), std.to(device), states.to(device)
    scaling = vae.config.scaling_factor

    unet.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=1e-2)
    step, wall = resume(config.output_dir, unet, optimizer, CONFIG_KEY)
    if step:
        logger.info("resumed the UNet at step %d", step)
    ckpt_path = os.path.join(config.output_dir, CHECKPOINT)
    log_path = os.path.join(config.output_dir, "log.jsonl")
    trim_log(log_path, step)
    window: list = []
    start = time.perf_counter() - wall
    while step < config.max_train_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        idx = torch.randint(len(images), (config.batch_size,), generator=generator)
        eps = torch.randn((config.batch_size, *mean.shape[1:]), generator=generator).to(device)
        pick = idx.to(device)
        latents = (mean[pick] + std[pick] * eps) * scaling
        rows = caption_row[idx]
        rows[torch.rand(config.batch_size, generator=generator) < config.caption_dropout] = 0  # the empty prompt
        loss = diffusion_loss(unet, scheduler, latents, states[rows.to(device)], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window.append(dict(loss=loss.item()))
        if step % config.logging_steps == 0 or step == config.max_train_steps:
            logger.info("unet %s", log_window(log_path, window, step, time.perf_counter() - start))
            window = []
        if step % config.checkpointing_steps == 0 or step == config.max_train_steps:
            save(ckpt_path, unet, optimizer, step, time.perf_counter() - start, CONFIG_KEY)
    unet.eval().to("cpu")
    unet.save_pretrained(os.path.join(config.output_dir, "unet"))
    wall = round(time.perf_counter() - start, 1)
    with open(os.path.join(config.output_dir, "unet_pretrain.json"), "w", encoding="utf-8") as f:
        json.dump(dict(asdict(config), steps=step, wall_s=wall), f, indent=1)
    return dict(steps=step, wall_s=wall, unet=unet)
