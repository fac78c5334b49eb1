"""AnyText2's training loss (the reference ``LatentDiffusion.p_losses`` as ``ControlLDM`` configures it):
the masked diffusion loss, and the two OCR losses per text line (CTC and the neck perceptual loss).

Per sample i, with eps the UNet output, x_t the noisy latent and t the timestep::

    simple_i = mean_chw[(eps - noise)^2 * (1 - nearest(inv_mask, latent size))]
    ocr_i    = loss_alpha * w(t_i) * mean_lines(mean((neck(decoded) - neck(original))^2) * lang_w)
    ctc_i    = loss_beta  * w(t_i) * mean_lines(CTC(logits(decoded), text) / T * lang_w)
    loss     = mean_i(simple_i + ocr_i + ctc_i)

With ``--prediction_type v_prediction`` the UNet output is v and ``noise`` in ``simple_i`` is replaced by
v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (``training_target``); x0 below is then sqrt(a_t) x_t - sqrt(1 - a_t) v.

``decoded`` is x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) decoded by the VAE (with gradients) or, with
``use_vae_upsample`` off, a grey bilinear upsampling of the latent; lines are cropped by their position
masks from it and from the original image. ``w(t) = alphas_cumprod[t]`` with ``with_step_weight``, else 1;
``lang_w`` is ``latin_weight`` for Latin lines, 1 otherwise. The OCR terms are exactly 0 when their
weight is 0 (the reference skips them; multiplying an infinite CTC by 0 would give NaN).

Per line: ``CTC(log_softmax(logits), labels, blank=0) / T * lang_w`` (T = 40 steps) and
``mean((neck(decoded crop) - neck(original crop))^2) * lang_w``. Decoded and original crops go through the
recognizer in one ``recognize_crops`` call, as in the reference (it matters only if the recognizer were
in train mode; it runs in eval mode here, frozen, as the reference forces its text_predictor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from ..models.ocr import BLANK_INDEX, crop_lines, recognize_crops, texts_to_labels

# ------------------------------------------------------------------------------ per-line OCR losses


def language_weight(language: str, latin_weight: float = 1.0) -> float:
    """AnyText2: Latin lines get ``latin_weight``, Chinese and every other language 1.0."""
    return float(latin_weight) if language == "Latin" else 1.0


def _weights(weights, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, device=like.device, dtype=like.dtype)
    w = torch.as_tensor(weights, device=like.device, dtype=like.dtype)
    if w.shape != (n,):
        raise ValueError(f"expected {n} per-line weights, got shape {tuple(w.shape)}")
    return w


def ctc_loss_per_line(
    logits: torch.Tensor, texts: Sequence[str], characters: Sequence[str], weights=None
) -> torch.Tensor:
    """(N,) CTC loss of each line's logits (N, T, C) against its text, divided by T, times its weight.

    Unknown characters count as the last class; a target longer than T gives ``inf`` (as the reference,
    which does not set ``zero_infinity``)."""
    if logits.shape[0] != len(texts):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(texts)} texts")
    targets, target_lengths = texts_to_labels(texts, characters)
    n, t = logits.shape[:2]
    # float32 as under autocast (CPU ctc_loss has no half kernel; half log-probabilities lose the tail)
    log_probs = logits.float().log_softmax(dim=2).permute(1, 0, 2)
    input_lengths = torch.full((n,), t, dtype=torch.long)
    loss = F.ctc_loss(
        log_probs,
        targets.to(logits.device),
        input_lengths.to(logits.device),
        target_lengths.to(logits.device),
        blank=BLANK_INDEX,
        reduction="none",
    )
    return loss / t * _weights(weights, n, loss)


def ocr_perceptual_loss_per_line(neck: torch.Tensor, neck_target: torch.Tensor, weights=None) -> torch.Tensor:
    """(N,) mean squared difference of two (N, T, D) neck feature sets, times the per-line weight."""
    if neck.shape != neck_target.shape:
        raise ValueError(f"neck shapes differ: {tuple(neck.shape)} vs {tuple(neck_target.shape)}")
    loss = ((neck.float() - neck_target.float()) ** 2).mean(dim=(1, 2))  # float32 whatever the recognizer's dtype
    return loss * _weights(weights, neck.shape[0], loss)


def mean_per_sample(per_line: torch.Tensor, n_lines: Sequence[int]) -> torch.Tensor:
    """(B,) mean over each sample's lines (lines sample-major); a sample without lines gives 0."""
    out, start = [], 0
    for n in (int(x) for x in n_lines):
        chunk = per_line[start : start + n]
        out.append(chunk.mean() if n > 0 else per_line.new_zeros(()))
        start += n
    if start != per_line.shape[0]:
        raise ValueError(f"n_lines sums to {start} but there are {per_line.shape[0]} per-line values")
    return torch.stack(out) if out else per_line.new_zeros((0,))


@dataclass
class OCRLineLosses:
    """Per valid line, sample-major: ``perceptual`` (neck MSE x language weight), ``ctc`` (CTC / T x
    language weight); ``weights`` are the language weights used. Reduce with ``mean_per_sample``."""

    perceptual: torch.Tensor
    ctc: torch.Tensor
    weights: torch.Tensor


def ocr_line_losses_from_crops(
    recognizer,
    decoded_crops: Sequence[torch.Tensor],
    original_crops: Sequence[torch.Tensor],
    texts: Sequence[str],
    languages: Sequence[str],
    latin_weight: float = 1.0,
    batch_size: int = 6,
) -> OCRLineLosses:
    """Crops are CHW in 0..255; only the decoded crops need to carry gradients."""
    n = len(decoded_crops)
    if not (n == len(original_crops) == len(texts) == len(languages)):
        raise ValueError(
            f"{n} decoded crops, {len(original_crops)} original crops, {len(texts)} texts, {len(languages)} languages"
        )
    out = recognize_crops(recognizer, list(decoded_crops) + list(original_crops), batch_size=batch_size)
    weights = torch.tensor([language_weight(lang, latin_weight) for lang in languages], device=out.neck.device)
    return OCRLineLosses(
        perceptual=ocr_perceptual_loss_per_line(out.neck[:n], out.neck[n:], weights),
        ctc=ctc_loss_per_line(out.logits[:n], texts, recognizer.characters, weights),
        weights=weights,
    )


def ocr_line_losses(
    recognizer,
    decoded_images: torch.Tensor,
    original_images: torch.Tensor,
    positions,
    n_lines: Sequence[int],
    texts: Sequence[str],
    languages: Sequence[str],
    latin_weight: float = 1.0,
    batch_size: int = 6,
) -> OCRLineLosses:
    """Images (B, 3, H, W) in 0..255 (decoded: clamp(vae.decode(pred_x0), -1, 1) mapped to 0..255);
    ``positions`` per sample and line (see :func:`crop_lines`); ``texts``/``languages`` per valid line,
    sample-major."""
    decoded = crop_lines(decoded_images, positions, n_lines)
    original = crop_lines(original_images, positions, n_lines)
    if not decoded:
        empty = decoded_images.new_zeros((0,))
        return OCRLineLosses(perceptual=empty, ctc=empty, weights=empty)
    return ocr_line_losses_from_crops(recognizer, decoded, original, texts, languages, latin_weight, batch_size)


# ------------------------------------------------------------------------------ the loss of a batch


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
    """(B,) Min-SNR-gamma weights, as diffusers' training examples compute them (``--snr_gamma``; Hang et al.
    2023): min(SNR(t), gamma) / SNR(t) for an epsilon prediction, min(SNR(t), gamma) / (SNR(t) + 1) for v."""
    snr = compute_snr(noise_scheduler, timesteps).float()
    if noise_scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=snr_gamma) / (snr + 1)
    return torch.clamp(snr, max=snr_gamma) / snr


def training_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet learns to output: the noise (epsilon) or v = sqrt(a_t) noise - sqrt(1 - a_t) x0."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"scheduler prediction_type {kind!r}: the loop trains epsilon or v_prediction")


def offset_noise(noise: torch.Tensor, noise_offset: float, draws: torch.Tensor) -> torch.Tensor:
    """``--noise_offset``: noise plus a constant per sample and channel, ``noise_offset * draws`` with
    ``draws`` (B, C) standard normal (diffusers' examples; lets the model shift an image's mean brightness)."""
    return noise + noise_offset * draws.to(noise.device, noise.dtype)[:, :, None, None]


def predict_x0(
    x_noisy: torch.Tensor,
    timesteps: torch.Tensor,
    model_output: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
):
    """x0 from the UNet's output: sqrt(1/a_t) x_t - sqrt(1/a_t - 1) eps, or sqrt(a_t) x_t - sqrt(1 - a_t) v."""
    a = alphas_cumprod.to(device=x_noisy.device, dtype=torch.float32)[timesteps].view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return a.sqrt() * x_noisy.float() - (1.0 - a).sqrt() * model_output.float()
    return (1.0 / a).sqrt() * x_noisy.float() - (1.0 / a - 1.0).sqrt() * model_output.float()


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
    target: torch.Tensor,
    x_noisy: torch.Tensor,
    timesteps: torch.Tensor,
    inv_mask: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    settings: LossSettings,
    vae=None,
    recognizer=None,
    targets: OCRTargets | None = None,
    simple_weights: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
) -> LossOutput:
    """The full loss of one batch (see the module docstring); ``target``: the noise (the reference's
    epsilon prediction) or v (``training_target``), ``prediction_type`` saying which. ``vae``, ``recognizer``
    and ``targets`` are needed only when ``loss_alpha`` or ``loss_beta`` is positive. ``simple_weights`` (B,)
    multiply the diffusion term only (Min-SNR); None leaves it as the reference computes it."""
    simple = masked_eps_loss(model_output, target, inv_mask)
    if simple_weights is not None:
        simple = simple * simple_weights.to(simple.device, simple.dtype)
    ocr = ctc = torch.zeros_like(simple)
    pred_x0 = decoded = None
    if settings.uses_ocr:
        if recognizer is None or targets is None or (settings.use_vae_upsample and vae is None):
            raise ValueError("the OCR losses need the recognizer, the OCR targets and (with use_vae_upsample) the VAE")
        ac = alphas_cumprod.to(device=simple.device, dtype=torch.float32)
        step_weight = ac[timesteps] if settings.with_step_weight else torch.ones_like(simple)
        pred_x0 = predict_x0(x_noisy, timesteps, model_output, alphas_cumprod, prediction_type)
        decoded = decode_for_ocr(pred_x0, vae, tuple(targets.images.shape[-2:]), settings.use_vae_upsample)
        ocr, ctc = ocr_losses(recognizer, decoded, targets, settings, step_weight.view(-1))
    loss = (simple + ocr + ctc).mean()
    return LossOutput(loss=loss, simple=simple, ocr=ocr, ctc=ctc, pred_x0=pred_x0, decoded=decoded)
