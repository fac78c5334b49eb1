"""One training step as one module: Batch -> latents, contexts, WriteNet residuals, UNet eps -> loss.

``AnyText2TrainingModel`` owns the components that can train (WriteNet, AttnX, text embedding, UNet) as
submodules, so a single ``accelerator.prepare`` (one DDP wrapper) covers them, AttnX included (it runs
inside the UNet through hooks, never through its own forward). The frozen parts (VAE, CLIP, the OCR
recognizer) are held outside the module tree: DDP neither broadcasts nor inspects them.

Randomness comes from an explicit ``torch.Generator`` (CPU, so runs are reproducible across devices):
the two VAE posterior samples, the noise and the timesteps, in that order. A list of generators (one per
sample, ``speed.sample_generators``) makes the draws independent of how a batch is split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.conditioning import AnyText2CaptionEncoder
from . import speed
from .losses import LossOutput, LossSettings, OCRTargets, p_losses


@dataclass
class FrozenParts:
    """Components that never train; a plain object so that they stay out of DDP and ``state_dict``."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    ocr: nn.Module
    noise_scheduler: object


def predict_noise(
    unet,
    controlnet,
    x_noisy: torch.Tensor,
    timesteps: torch.Tensor,
    image_context: torch.Tensor,
    text_context: torch.Tensor,
    glyphs: torch.Tensor,
    positions: torch.Tensor,
    masked_latents: torch.Tensor,
    only_mid_control: bool = False,
    attnx_scale: float = 1.0,
    control_scales: float | list[float] = 1.0,
) -> torch.Tensor:
    """The reference's ``ControlLDM.apply_model``: WriteNet reads the TEXT caption context, the UNet (with
    AttnX hooked in) the IMAGE caption context; residual i, times ``control_scales[i]``, goes to the skip
    connections and the mid block (mid block only with ``only_mid_control``)."""
    res = controlnet(
        x_noisy,
        timesteps,
        text_context,
        glyphs=glyphs,
        positions=positions,
        masked_latents=masked_latents,
        conditioning_scale=control_scales,
    )
    down = None if only_mid_control else list(res.down_block_res_samples)
    return unet(
        x_noisy,
        timesteps,
        encoder_hidden_states=image_context,
        down_block_additional_residuals=down,
        mid_block_additional_residual=res.mid_block_res_sample,
        cross_attention_kwargs={"attnx_scale": float(attnx_scale)},
    ).sample


def control_scales_for(controlnet, scales) -> list[float]:
    """``scales`` (one value, or one per residual) as one float per WriteNet residual; a clear error otherwise."""
    values = [float(s) for s in ([scales] if isinstance(scales, (int, float)) else scales)]
    n = controlnet.num_residuals
    if len(values) == 1:
        values *= n
    if len(values) != n:
        raise ValueError(f"control_scales: WriteNet has {n} residuals, got {len(values)} values")
    return values


class AnyText2TrainingModel(nn.Module):
    def __init__(self, unet, controlnet, attnx, text_embedding, frozen: FrozenParts, config):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.attnx = attnx
        self.text_embedding = text_embedding
        self.frozen = frozen
        self.captions = AnyText2CaptionEncoder(frozen.tokenizer, frozen.text_encoder)
        self.loss_settings = LossSettings.from_config(config)
        self.only_mid_control = bool(config.only_mid_control)
        self.attnx_scale = float(config.attnx_scale)
        self.control_scales = control_scales_for(controlnet, getattr(config, "control_scales", [1.0]))
        self.train_text_embedding = bool(config.train_text_embedding)
        self.train_font_ocr = bool(config.train_font_ocr)
        self.font_ocr_train_mode = bool(getattr(config, "font_ocr_train_mode", True))
        # The constant generation-mode masked posterior is computed once; with --cache_latents also the
        # target images' posteriors (training mode only; validation encodes them live).
        self.latent_cache = speed.LatentCache(cache_images=bool(getattr(config, "cache_latents", False)))
        if not attnx.is_attached:
            attnx.attach(unet)

    def train(self, mode: bool = True):
        """Train mode where the reference trains; frozen parts stay in eval (the VAE, CLIP and the glyph
        recognizer always are). A frozen text embedding / font recognizer is put in eval too."""
        super().train(mode)
        if not self.train_text_embedding:
            self.text_embedding.eval()
        elif (not self.train_font_ocr or not self.font_ocr_train_mode) and getattr(
            self.text_embedding, "font_predictor", None
        ) is not None:
            self.text_embedding.font_predictor.eval()
        return self

    # -- the pieces of a step ----------------------------------------------------------------------
    @torch.no_grad()
    def _posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior of float images in [-1, 1] (contiguous NCHW input: a
        channels-last view changes the VAE's numerics)."""
        vae = self.frozen.vae
        dist = vae.encode(images.to(vae.device, vae.dtype).contiguous()).latent_dist
        return dist.mean, dist.std

    @torch.no_grad()
    def encode_images(self, batch, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior samples of the image and the masked image, x scaling_factor. ``generator``: one
        ``torch.Generator`` or one per sample."""
        vae = self.frozen.vae
        n = len(batch)
        if self.latent_cache.cache_images and not self.training:
            mean, std = self._posterior(torch.cat([batch.image_float(), batch.masked_image_float()]))
        else:
            (mean, std), (mmean, mstd) = self.latent_cache.posteriors(batch, self._posterior)
            mean, std = torch.cat([mean, mmean]).to(vae.device), torch.cat([std, mstd]).to(vae.device)
        shape = (n, *mean.shape[1:])
        # Image noise first, masked-image noise second (the reference's order).
        if isinstance(generator, (list, tuple)):
            pairs = speed.randn((n, 2, *shape[1:]), generator)
            eps = torch.cat([pairs[:, 0], pairs[:, 1]]).to(vae.device)
        else:
            eps = torch.cat([speed.randn(shape, generator), speed.randn(shape, generator)]).to(vae.device)
        latents = (mean.float() + std.float() * eps) * vae.config.scaling_factor
        return latents[:n], latents[n:]

    def encode_lines_and_captions(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_context, text_context): the image caption without gradients (frozen CLIP, no
        placeholders), the text caption with the line tokens substituted (with gradients when the text
        embedding trains, as the reference's ``cond_stage_trainable``)."""
        with torch.no_grad():
            image_context = self.captions.encode_image_captions(batch.image_caption)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_text_embedding):
            lines = self.text_embedding(
                glyph_line=batch.glyph_line,
                position=batch.position,
                font_hint=batch.font_hint,
                color=batch.color.float(),
                n_lines=batch.n_lines,
                glyph_recognizer=self.frozen.ocr,
            )
            text_context = self.captions.encode_text_captions(batch.text_caption, lines.line_embeds, batch.n_lines)
        return image_context, text_context

    def forward(self, batch, generator) -> LossOutput:
        """The loss of one batch; ``generator``: one ``torch.Generator`` or a list, one per sample."""
        latents, masked_latents = self.encode_images(batch, generator)
        image_context, text_context = self.encode_lines_and_captions(batch)
        scheduler = self.frozen.noise_scheduler
        noise = speed.randn(latents.shape, generator, latents.device)
        n = latents.shape[0]
        timesteps = speed.randint(scheduler.config.num_train_timesteps, n, generator, latents.device)
        x_noisy = scheduler.add_noise(latents, noise, timesteps)
        eps = predict_noise(
            self.unet,
            self.controlnet,
            x_noisy,
            timesteps,
            image_context,
            text_context,
            glyphs=batch.glyphs,
            positions=batch.position[:, :, 0],
            masked_latents=masked_latents,
            only_mid_control=self.only_mid_control,
            attnx_scale=self.attnx_scale,
            control_scales=self.control_scales,
        )
        return p_losses(
            eps,
            noise,
            x_noisy,
            timesteps,
            batch.inv_mask,
            scheduler.alphas_cumprod,
            self.loss_settings,
            vae=self.frozen.vae,
            recognizer=self.frozen.ocr,
            targets=OCRTargets.from_batch(batch) if self.loss_settings.uses_ocr else None,
        )
