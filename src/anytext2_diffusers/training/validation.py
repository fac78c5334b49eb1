"""Validation: v/* losses on held-out batches, and one image grid for the trackers.

Grid columns per validation sample (named in a header strip of the image): source with its line
outlines and texts, VAE reconstruction, masked image, glyphs, position hint, a sample generated
through ``AnyText2Pipeline`` with classifier-free guidance, and the OCR reading of each generated
line next to its target. Validation runs on the main process with the unwrapped model and a fixed
generator, so its numbers are comparable across steps; a failure in it is logged and never stops
training.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data import collate_samples
from ..data.fonts import BUNDLED_FONT_DIR
from ..models.ocr import crop_line_by_mask

logger = logging.getLogger(__name__)
COLUMNS = ("source", "reconstruction", "masked image", "glyphs", "positions", "generated", "OCR: target -> read")


@torch.no_grad()
def validation_losses(model, loader, max_batches: int, seed: int, device) -> dict[str, float]:
    """Mean v/sim, v/ocr, v/ctc, v/loss over up to ``max_batches`` batches (sample-weighted)."""
    was_training = model.training
    model.eval()
    totals, count = {}, 0
    generator = torch.Generator().manual_seed(seed)
    try:
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            out = model(batch.to(device), generator)
            n = len(batch)
            for k, v in out.scalars("v").items():
                totals[k] = totals.get(k, 0.0) + v * n
            count += n
    finally:
        model.train(was_training)
    return {k: v / max(count, 1) for k, v in totals.items()}


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("WenQuanYiMicroHei-Subset.ttf", "NotoSans-Regular.ttf"):
        path = os.path.join(BUNDLED_FONT_DIR, name)
        if os.path.isfile(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def _tile(array: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxW or HxWx3 -> size x size x 3."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[:2] != (size, size):
        array = cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(array)


def _mask_u8(mask: torch.Tensor) -> np.ndarray:
    return (mask.float().cpu().numpy() > 0).astype(np.uint8) * 255


def _source_with_lines(image: np.ndarray, positions: torch.Tensor, texts: list[str]) -> np.ndarray:
    out = image.copy()
    for j in range(len(texts)):
        contours, _ = cv2.findContours(_mask_u8(positions[j]), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.polylines(out, contours, True, (255, 0, 0), 1)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = _font(max(10, image.shape[0] // 16))
    for j, text in enumerate(texts):
        ys, xs = np.nonzero(positions[j].cpu().numpy())
        if len(xs):
            draw.text((int(xs.min()), max(0, int(ys.min()) - font.size)), text, fill=(255, 255, 0), font=font)
    return np.asarray(pil)


def _text_panel(lines: list[str], size: int) -> np.ndarray:
    pil = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    font = _font(max(9, size // 14))
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (font.size + 4)), line, fill=(0, 0, 0), font=font)
    return np.asarray(pil)


def header_row(columns, size: int) -> np.ndarray:
    """A white strip with each column's name centred over its tile, so a grid reads without the docs."""
    height = max(16, size // 8)
    pil = Image.new("RGB", (size * len(columns), height), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    font = _font(max(8, int(height * 0.6)))
    for i, name in enumerate(columns):
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        x = i * size + max(0, (size - (right - left)) // 2)
        draw.text((x, (height - (bottom - top)) // 2 - top), name, fill=(0, 0, 0), font=font)
    return np.asarray(pil)


def ocr_lines(texts: list[str], reads: list[str] | None) -> list[str]:
    """``target -> read`` per line; ``?`` before any sample exists, ``(nothing read)`` for an empty reading."""
    if reads is None:
        return [f"{t} -> ?" for t in texts]
    return [f"{t} -> {r if r.strip() else '(nothing read)'}" for t, r in zip(texts, reads)]


def _to_u8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def generate_samples(parts: dict, batch, config) -> np.ndarray | None:
    """(B, H, W, 3) uint8 samples from ``AnyText2Pipeline`` (CFG), or None when the pipeline is unavailable."""
    try:
        from ..pipelines import AnyText2Pipeline
    except ImportError as err:
        logger.warning("validation: AnyText2Pipeline not available (%s); no generated samples", err)
        return None
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(parts["scheduler"].config, set_alpha_to_one=False, clip_sample=False)
    pipe = AnyText2Pipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=parts["controlnet"],
        attnx=parts["attnx"],
        scheduler=scheduler,
        text_embedding=parts["text_embedding"],
        ocr=parts["ocr"],
    )
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(batch))]
    out = pipe.generate_from_batch(
        batch,
        num_inference_steps=config.validation_num_inference_steps,
        guidance_scale=config.validation_guidance_scale,
        generator=generators,
        output_type="np",
    )
    return (np.asarray(out.images) * 255).round().astype(np.uint8)


@torch.no_grad()
def validation_grid(model, parts: dict, dataset, config, device) -> np.ndarray:
    """A header naming the columns of ``COLUMNS``, then one row per validation sample (uint8 HxWx3)."""
    n = min(config.num_validation_images, len(dataset))
    batch = collate_samples([dataset[(0, i)] for i in range(n)], config.max_lines).to(device)
    size = config.resolution
    vae = parts["vae"]
    latents = vae.encode(batch.image_float(vae.dtype).contiguous()).latent_dist.mean
    recon = _to_u8(vae.decode(latents).sample)
    try:
        generated = generate_samples(parts, batch, config)
    except Exception as err:  # noqa: BLE001 - validation must not end a training run
        logger.warning("validation: generating samples failed: %s", err)
        generated = None
    images = batch.image.permute(0, 2, 3, 1).cpu().numpy()
    masked = batch.masked_image.permute(0, 2, 3, 1).cpu().numpy()
    rows = []
    for b in range(n):
        k = int(batch.n_lines[b])
        texts = batch.text[b][:k]
        positions = batch.position[b, :k, 0]
        tiles = [
            _source_with_lines(images[b], positions, texts),
            recon[b],
            masked[b],
            _mask_u8(batch.glyphs[b, 0]),
            _mask_u8(batch.position[b, :, 0].any(dim=0)),
        ]
        lines = ocr_lines(texts, None)
        if generated is not None:
            tiles.append(generated[b])
            gen = torch.from_numpy(generated[b]).permute(2, 0, 1).float()
            crops = [crop_line_by_mask(gen, positions[j].cpu()) for j in range(k)]
            lines = ocr_lines(texts, parts["ocr"].read(crops) if crops else [])
        else:
            tiles.append(np.zeros((size, size, 3), np.uint8))
        tiles.append(_text_panel(lines, size))
        rows.append(np.concatenate([_tile(t, size) for t in tiles], axis=1))
    return np.concatenate([header_row(COLUMNS, size), *rows], axis=0)


def log_images(accelerator, tag: str, image: np.ndarray, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image, caption=" | ".join(COLUMNS))}, step=step)


def run_validation(accelerator, model, parts: dict, loader, dataset, config, step: int) -> dict[str, float]:
    """Losses + image grid (main process); returns the v/* scalars (empty without validation data)."""
    if dataset is None:
        return {}
    # Eval mode throughout: in train mode the pipeline's text embedding would update the font
    # recognizer's BatchNorm statistics, so validating would change the model.
    was_training = model.training
    model.eval()
    try:
        scalars = validation_losses(model, loader, config.max_validation_batches, config.seed, accelerator.device)
        if config.num_validation_images > 0:
            try:
                grid = validation_grid(model, parts, dataset, config, accelerator.device)
                folder = os.path.join(config.output_dir, "validation")
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(grid).save(os.path.join(folder, f"step-{step:06d}.png"))
                log_images(accelerator, "v/images", grid, step)
            except Exception as err:  # noqa: BLE001 - validation must not end a training run
                logger.warning("validation images at step %d failed: %s", step, err)
    finally:
        model.train(was_training)
    return scalars
