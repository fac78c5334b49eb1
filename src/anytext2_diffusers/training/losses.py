"""AnyText2's training loss (the reference ``LatentDiffusion.p_losses`` as ``ControlLDM`` configures it).

Per sample i, with eps the UNet output, x_t the noisy latent and t the timestep::

    simple_i = mean_chw[(eps - noise)^2 * (1 - nearest(inv_mask, latent size))]
    ocr_i    = loss_alpha * w(t_i) * mean_lines(mean((neck(decoded) - neck(original))^2) * lang_w)
    ctc_i    = loss_beta  * w(t_i) * mean_lines(CTC(logits(decoded), text) / T * lang_w)
    loss     = mean_i(simple_i + ocr_i + ctc_i)

``decoded`` is x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) decoded by the VAE (with gradients) or, with
``use_vae_upsample`` off, a grey bilinear upsampling of the latent; lines are cropped by their position
masks from it and from the original image. ``w(t) = alphas_cumprod[t]`` with ``with_step_weight``, else 1;
``lang_w`` is ``latin_weight`` for Latin lines, 1 otherwise. The OCR terms are exactly 0 when their
weight is 0 (the reference skips them; multiplying an infinite CTC by 0 would give NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from ..models.ocr import mean_per_sample, ocr_line_losses


@dataclass
class LossSettings:
    loss_alpha: float = 0.0
    loss_beta: float = 0.0
    latin_weight: float = 1.0
    with_step_weight: bool = True
    use_vae_upsample: bool = True

    @classmethod
    def from_config(cls, config) -> LossSettings:
        return cls(
            loss_alpha=config.loss_alpha,
            loss_beta=config.loss_beta,
            latin_weight=config.latin_weight,
            with_step_weight=config.with_step_weight,
            use_vae_upsample=config.use_vae_upsample,
        )

    @property
    def uses_ocr(self) -> bool:
        return self.loss_alpha > 0 or self.loss_beta > 0


@dataclass
class OCRTargets:
    """What the OCR losses compare against: original images (B, 3, H, W) in 0..255, line masks
    (B, L, 1, H, W), and per valid line (sample-major) its text and language."""

    images: torch.Tensor
    positions: torch.Tensor
    n_lines: list
    texts: list
    languages: list

    @classmethod
    def from_batch(cls, batch) -> OCRTargets:
        n_lines = [int(n) for n in batch.n_lines]
        return cls(
            images=batch.image.float(),
            positions=batch.position,
            n_lines=n_lines,
            texts=[t for b, n in enumerate(n_lines) for t in batch.text[b][:n]],
            languages=[lang for b, n in enumerate(n_lines) for lang in batch.language[b][:n]],
        )


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean over samples of simple + ocr + ctc
    simple: torch.Tensor  # (B,)
    ocr: torch.Tensor  # (B,)
    ctc: torch.Tensor  # (B,)
    pred_x0: torch.Tensor | None = None
    decoded: torch.Tensor | None = None  # (B, 3, H, W) in 0..255, what the OCR read

    def scalars(self, prefix: str) -> dict[str, float]:
        """The reference's log names: ``{prefix}/sim``, ``/ocr``, ``/ctc``, ``/loss``."""
        return {
            f"{prefix}/sim": self.simple.mean().item(),
            f"{prefix}/ocr": self.ocr.mean().item(),
            f"{prefix}/ctc": self.ctc.mean().item(),
            f"{prefix}/loss": self.loss.item(),
        }


def masked_eps_loss(model_output: torch.Tensor, target: torch.Tensor, inv_mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean over C, H, W of the squared error, zeroed where ``inv_mask`` (B, 1, H, W) marks
    ignored text (resized to latent size by nearest neighbour, as the reference)."""
    mask = F.interpolate(inv_mask.float(), size=model_output.shape[-2:], mode="nearest")
    err = (model_output.float() - target.float()) ** 2
    return (err * (1.0 - mask)).mean(dim=(1, 2, 3))


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma weights of an epsilon-prediction loss, min(SNR(t), gamma) / SNR(t), as diffusers'
    training examples compute them (``--snr_gamma``; Hang et al. 2023)."""
    snr = compute_snr(noise_scheduler, timesteps).float()
    return torch.clamp(snr, max=snr_gamma) / snr


def offset_noise(noise: torch.Tensor, noise_offset: float, draws: torch.Tensor) -> torch.Tensor:
    """``--noise_offset``: noise plus a constant per sample and channel, ``noise_offset * draws`` with
    ``draws`` (B, C) standard normal (diffusers' examples; lets the model shift an image's mean brightness)."""
    return noise + noise_offset * draws.to(noise.device, noise.dtype)[:, :, None, None]


def predict_x0(x_noisy: torch.Tensor, timesteps: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor):
    """x0 from an epsilon prediction: sqrt(1/a_t) x_t - sqrt(1/a_t - 1) eps."""
    a = alphas_cumprod.to(device=x_noisy.device, dtype=torch.float32)[timesteps].view(-1, 1, 1, 1)
    return (1.0 / a).sqrt() * x_noisy.float() - (1.0 / a - 1.0).sqrt() * eps.float()


def decode_for_ocr(pred_x0: torch.Tensor, vae, size: tuple[int, int], use_vae_upsample: bool) -> torch.Tensor:
    """(B, 3, H, W) image in 0..255 with gradients to ``pred_x0`` (the VAE's own weights are frozen)."""
    if use_vae_upsample:
        latents = pred_x0 / vae.config.scaling_factor
        image = vae.decode(latents.to(vae.dtype)).sample.float()
    else:
        image = F.interpolate(pred_x0.float(), size=size, mode="bilinear", align_corners=True)
        image = image.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)
    return (image.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0


def ocr_losses(
    recognizer,
    decoded: torch.Tensor,
    targets: OCRTargets,
    settings: LossSettings,
    step_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) OCR perceptual and CTC terms, already multiplied by ``loss_alpha``/``loss_beta`` and the step weight."""
    batch = decoded.shape[0]
    zeros = decoded.new_zeros(batch)
    if sum(targets.n_lines) == 0:
        return zeros, zeros
    recognizer.eval()  # frozen and in eval mode, as the reference forces its text_predictor
    lines = ocr_line_losses(
        recognizer,
        decoded,
        targets.images.to(decoded.device, torch.float32),
        targets.positions,
        targets.n_lines,
        targets.texts,
        targets.languages,
        latin_weight=settings.latin_weight,
    )
    ocr = zeros
    ctc = zeros
    if settings.loss_alpha > 0:
        ocr = mean_per_sample(lines.perceptual.float(), targets.n_lines) * settings.loss_alpha * step_weight
    if settings.loss_beta > 0:
        ctc = mean_per_sample(lines.ctc.float(), targets.n_lines) * settings.loss_beta * step_weight
    return ocr, ctc


def p_losses(
    model_output: torch.Tensor,
    noise: torch.Tensor,
    x_noisy: torch.Tensor,
    timesteps: torch.Tensor,
    inv_mask: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    settings: LossSettings,
    vae=None,
    recognizer=None,
    targets: OCRTargets | None = None,
    simple_weights: torch.Tensor | None = None,
) -> LossOutput:
    """The full loss of one batch (see the module docstring); ``vae``, ``recognizer`` and ``targets``
    are needed only when ``loss_alpha`` or ``loss_beta`` is positive. ``simple_weights`` (B,) multiply the
    diffusion term only (Min-SNR); None leaves it as the reference computes it."""
    simple = masked_eps_loss(model_output, noise, inv_mask)
    if simple_weights is not None:
        simple = simple * simple_weights.to(simple.device, simple.dtype)
    ocr = ctc = torch.zeros_like(simple)
    pred_x0 = decoded = None
    if settings.uses_ocr:
        if recognizer is None or targets is None or (settings.use_vae_upsample and vae is None):
            raise ValueError("the OCR losses need the recognizer, the OCR targets and (with use_vae_upsample) the VAE")
        ac = alphas_cumprod.to(device=simple.device, dtype=torch.float32)
        step_weight = ac[timesteps] if settings.with_step_weight else torch.ones_like(simple)
        pred_x0 = predict_x0(x_noisy, timesteps, model_output, alphas_cumprod)
        decoded = decode_for_ocr(pred_x0, vae, tuple(targets.images.shape[-2:]), settings.use_vae_upsample)
        ocr, ctc = ocr_losses(recognizer, decoded, targets, settings, step_weight.view(-1))
    loss = (simple + ocr + ctc).mean()
    return LossOutput(loss=loss, simple=simple, ocr=ocr, ctc=ctc, pred_x0=pred_x0, decoded=decoded)
