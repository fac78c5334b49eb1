"""One training step as one module: Batch -> latents, contexts, WriteNet residuals, UNet eps -> loss.

``AnyText2TrainingModel`` owns the components that can train (WriteNet, AttnX, text embedding, UNet) as
submodules, so a single ``accelerator.prepare`` (one DDP wrapper) covers them, AttnX included (it runs
inside the UNet through hooks, never through its own forward). The frozen parts (VAE, CLIP, the OCR
recognizer) are held outside the module tree: DDP neither broadcasts nor inspects them.

Randomness comes from explicit CPU ``torch.Generator``s (runs are reproducible across devices): the two
VAE posterior samples, the noise and the timesteps, in that order. ``sample_generators`` gives one per
sample, seeded by (seed, optimizer step, dataset index), so 1 process x 2B samples and 2 processes x B
samples draw the same numbers (DDP averages the per-process mean losses into the same global mean).

The latent cache keeps the VAE posterior (mean, std) of each target image, keyed by dataset index:
target images are never augmented (``AnyText2TrainDataset`` only resizes them), so their posterior is a
constant of the record; the posterior *sample* is still drawn every step from the sample's generator,
so the loss is the same with and without the cache. The masked image of a generation-mode sample is
all -1, so its posterior is one constant; edit-mode masked images depend on the drawn lines and are
encoded live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.conditioning import AnyText2CaptionEncoder
from ..models.ocr.neck_cache import FrozenNeckCache
from .losses import LossOutput, LossSettings, OCRTargets, min_snr_weights, offset_noise, p_losses, training_target


def derive_seed(*key: int) -> int:
    """A 63-bit seed that is a pure function of ``key`` (numpy's ``SeedSequence``): the one seeding rule of
    training, for per-sample generators and for the global RNG of each micro-step."""
    word = np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0]
    return int(word) & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(seed: int, step: int, indices) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, optimizer step, dataset index)."""
    return [torch.Generator().manual_seed(derive_seed(seed, step, i)) for i in torch.as_tensor(indices).tolist()]


def randn(shape: tuple, generator, device=None) -> torch.Tensor:
    """(n, *shape) normal draws: from one generator, or one row per generator of a list."""
    if isinstance(generator, (list, tuple)):
        out = torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    else:
        out = torch.randn(shape, generator=generator)
    return out.to(device)


def randint(high: int, n: int, generator, device=None) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        out = torch.cat([torch.randint(0, high, (1,), generator=g) for g in generator])
    else:
        out = torch.randint(0, high, (n,), generator=generator)
    return out.to(device)


class LatentCache:
    """The constant generation-mode masked posterior (an all -1 image: always computed once per size), and
    with ``cache_images`` (``--cache_latents``) the VAE posteriors (mean, std) of target images by dataset
    index; held on the CPU in the VAE's dtype (64 KiB per 512 px sample in fp16).

    One cache per process; each fills it with the samples it sees, so from the second epoch on the VAE
    encoder runs only for edit-mode masked images. Posterior samples are still drawn every step."""

    def __init__(self, cache_images: bool = True):
        self.cache_images = cache_images
        self.images: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.blank: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.images)

    def posteriors(self, batch, encode) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((mean, std) of the images, (mean, std) of the masked images) for ``batch``; ``encode`` maps
        a float image batch in [-1, 1] to (mean, std). Everything not cached goes through one VAE call."""
        n = len(batch)
        shape = tuple(batch.image.shape[1:])
        if self.cache_images:
            if batch.index is None:
                raise ValueError("--cache_latents needs Batch.index (the dataset index of every sample)")
            keys = batch.index.tolist()
            missing, seen = [], set()  # first row of each uncached index (an index may repeat in a batch)
            for i, key in enumerate(keys):
                if key not in self.images and key not in seen:
                    seen.add(key)
                    missing.append(i)
        else:
            keys, missing = None, list(range(n))
        edit = batch.edit_mode.tolist()
        edit_rows = [i for i in range(n) if edit[i]]
        need_blank = not all(edit) and shape not in self.blank
        parts = []
        if missing:
            parts.append(batch.image_float()[missing])
        if edit_rows:
            parts.append(batch.masked_image_float()[edit_rows])
        if need_blank:
            parts.append(torch.full((1, *shape), -1.0, device=batch.image.device))  # beside the batch (cuda)
        mean = std = None
        if parts:
            mean, std = encode(torch.cat(parts))
            mean, std = mean.cpu(), std.cpu()
        self.hits += n - len(missing)
        self.misses += len(missing)
        k = len(missing)
        if self.cache_images:
            for j, i in enumerate(missing):
                self.images[keys[i]] = (mean[j].clone(), std[j].clone())
            image = tuple(torch.stack([self.images[key][c] for key in keys]) for c in (0, 1))
        else:
            image = (mean[:n], std[:n])
        live = {i: (mean[k + j], std[k + j]) for j, i in enumerate(edit_rows)}
        if need_blank:
            self.blank[shape] = (mean[-1].clone(), std[-1].clone())
        masked = tuple(torch.stack([live[i][c] if edit[i] else self.blank[shape][c] for i in range(n)]) for c in (0, 1))
        return image, masked


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
        self.control_scales = control_scales_for(controlnet, config.control_scales)
        self.train_text_embedding = bool(config.train_text_embedding)
        self.train_font_ocr = bool(config.train_font_ocr)
        self.snr_gamma = config.snr_gamma
        self.noise_offset = float(config.noise_offset)
        self.font_ocr_train_mode = bool(config.font_ocr_train_mode)
        # The constant generation-mode masked posterior is computed once; with --cache_latents also the
        # target images' posteriors (training mode only; validation encodes them live).
        self.latent_cache = LatentCache(cache_images=bool(config.cache_latents))
        # --cache_ocr_necks: the frozen recognizer's necks by exact input (glyph lines repeat across epochs).
        self.neck_cache = FrozenNeckCache(config.cache_ocr_necks) if config.cache_ocr_necks > 0 else None
        if not attnx.is_attached:
            attnx.attach(unet)

    def cache_summary(self) -> str:
        """Hit counts of the speed caches of this process, for the epoch log."""
        latent = self.latent_cache
        text = f"latent cache {len(latent)} images, {latent.hits} hits / {latent.misses} misses"
        if self.neck_cache is not None:
            n = self.neck_cache.stats()
            text += (
                f"; OCR neck cache {n['entries']} entries, hit rate {n['hit_rate']:.3f} "
                f"({n['hits']} / {n['hits'] + n['misses']}), {n['evictions']} evicted, {n['bypassed']} bypassed"
            )
        return text

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
            pairs = randn((n, 2, *shape[1:]), generator)
            eps = torch.cat([pairs[:, 0], pairs[:, 1]]).to(vae.device)
        else:
            eps = torch.cat([randn(shape, generator), randn(shape, generator)]).to(vae.device)
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
                neck_cache=self.neck_cache,
            )
            text_context = self.captions.encode_text_captions(batch.text_caption, lines.line_embeds, batch.n_lines)
        return image_context, text_context

    def forward(self, batch, generator) -> LossOutput:
        """The loss of one batch; ``generator``: one ``torch.Generator`` or a list, one per sample."""
        latents, masked_latents = self.encode_images(batch, generator)
        image_context, text_context = self.encode_lines_and_captions(batch)
        scheduler = self.frozen.noise_scheduler
        noise = randn(latents.shape, generator, latents.device)
        n = latents.shape[0]
        timesteps = randint(scheduler.config.num_train_timesteps, n, generator, latents.device)
        if self.noise_offset:  # drawn after the timesteps: without the option every draw stays as before
            noise = offset_noise(noise, self.noise_offset, randn(latents.shape[:2], generator, latents.device))
        x_noisy = scheduler.add_noise(latents, noise, timesteps)
        model_output = predict_noise(  # the noise, or v with a v_prediction scheduler
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
            model_output,
            training_target(scheduler, latents, noise, timesteps),
            x_noisy,
            timesteps,
            batch.inv_mask,
            scheduler.alphas_cumprod,
            self.loss_settings,
            vae=self.frozen.vae,
            recognizer=self.frozen.ocr,
            targets=OCRTargets.from_batch(batch) if self.loss_settings.uses_ocr else None,
            simple_weights=min_snr_weights(scheduler, timesteps, self.snr_gamma) if self.snr_gamma else None,
            prediction_type=scheduler.config.prediction_type,
        )
