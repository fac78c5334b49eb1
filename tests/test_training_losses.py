"""Loss semantics beyond the parity pack: masking, zero OCR weights, the grey-upsampling path, gradients."""

from __future__ import annotations

import torch

from anytext2_diffusers.models.ocr import PPOCRRecognizer, load_character_list
from anytext2_diffusers.testing import sd15_scheduler, tiny_components
from anytext2_diffusers.training.losses import (
    LossSettings,
    OCRTargets,
    decode_for_ocr,
    masked_eps_loss,
    p_losses,
    predict_x0,
)


def test_inv_mask_removes_ignored_text_from_the_loss():
    g = torch.Generator().manual_seed(0)
    eps, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    inv = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    inv[1, :, :32] = True  # top half of sample 1 is ignored text
    loss = masked_eps_loss(eps, noise, inv)
    err = (eps - noise) ** 2
    assert torch.allclose(loss[0], err[0].mean())
    # mean over all C*H*W positions (masked ones count as zeros), as the reference
    assert torch.allclose(loss[1], err[1, :, 4:].sum() / err[1].numel())


def test_predict_x0_inverts_add_noise():
    scheduler = sd15_scheduler()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    xt = scheduler.add_noise(x0, noise, t)
    assert torch.allclose(predict_x0(xt, t, noise, scheduler.alphas_cumprod), x0, atol=1e-3)


def _setup(n_lines=(1, 1), text="hello"):
    parts = tiny_components(seed=0)
    ocr = PPOCRRecognizer(
        backbone_scale=0.25, image_width=160, neck_hidden_dims=32, neck_dims=32, characters=load_character_list()
    ).eval()
    b = len(n_lines)
    positions = torch.zeros(b, 2, 1, 64, 64, dtype=torch.bool)
    positions[:, 0, :, 20:36, 8:56] = True
    targets = OCRTargets(
        images=torch.randint(0, 256, (b, 3, 64, 64)).float(),
        positions=positions,
        n_lines=list(n_lines),
        texts=[text] * sum(n_lines),
        languages=["Latin"] * sum(n_lines),
    )
    g = torch.Generator().manual_seed(2)
    x_noisy, noise = torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 4, 8, 8, generator=g)
    eps = torch.randn(b, 4, 8, 8, generator=g, requires_grad=True)
    return parts, ocr, targets, x_noisy, noise, eps


def test_zero_ocr_weights_give_exact_zeros_even_with_an_infinite_ctc():
    parts, ocr, targets, x_noisy, noise, eps = _setup(text="x" * 60)  # longer than the 20 CTC steps: inf
    t = torch.tensor([10, 900])
    inv = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    only_ocr = LossSettings(loss_alpha=1.0, loss_beta=0.0)
    out = p_losses(eps, noise, x_noisy, t, inv, parts["scheduler"].alphas_cumprod, only_ocr, parts["vae"], ocr, targets)
    assert torch.equal(out.ctc, torch.zeros(2)) and torch.isfinite(out.loss)
    both = LossSettings(loss_alpha=1.0, loss_beta=1.0)
    out = p_losses(eps, noise, x_noisy, t, inv, parts["scheduler"].alphas_cumprod, both, parts["vae"], ocr, targets)
    assert torch.isinf(out.ctc).all()  # as the reference (no zero_infinity); the loop then skips the update


def test_step_weight_language_weight_and_gradient():
    parts, ocr, targets, x_noisy, noise, eps = _setup()
    ac = parts["scheduler"].alphas_cumprod
    t = torch.tensor([10, 900])
    inv = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    flat = LossSettings(loss_alpha=1.0, loss_beta=1.0, with_step_weight=False)
    weighted = LossSettings(loss_alpha=1.0, loss_beta=1.0, with_step_weight=True, latin_weight=0.5)
    a = p_losses(eps, noise, x_noisy, t, inv, ac, flat, parts["vae"], ocr, targets)
    b = p_losses(eps, noise, x_noisy, t, inv, ac, weighted, parts["vae"], ocr, targets)
    assert torch.allclose(b.ctc, a.ctc * ac[t] * 0.5, rtol=1e-5)
    assert torch.allclose(b.loss, (b.simple + b.ocr + b.ctc).mean())
    b.loss.backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all()
    # the OCR terms reach eps through x0 and the (frozen) VAE decoder
    eps.grad = None
    a.ctc.sum().backward()
    assert eps.grad.abs().sum() > 0


def test_grey_upsampling_without_the_vae():
    x0 = torch.randn(1, 4, 8, 8)
    image = decode_for_ocr(x0, vae=None, size=(64, 64), use_vae_upsample=False)
    assert image.shape == (1, 3, 64, 64) and image.min() >= 0 and image.max() <= 255
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
