"""Offline smoke run of the model blocks: ``python -m anytext2_diffusers.smoke``.

Builds the tiny SD1.5-shaped stack, attaches WriteNet and AttnX, runs one training step on random
conditions and checks that only WriteNet and AttnX received gradients.
"""

import time

import torch

from . import AnyText2AttnXModel, AnyText2ControlNetModel
from .testing import tiny_components


def main() -> None:
    start = time.time()
    parts = tiny_components(seed=0)
    unet = parts["unet"].requires_grad_(False)
    writenet = AnyText2ControlNetModel.from_unet(unet).train()
    attnx = AnyText2AttnXModel.from_unet(unet).attach(unet)
    params = list(writenet.parameters()) + list(attnx.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    g = torch.Generator().manual_seed(0)
    glyphs = torch.zeros(1, 1, 256, 256)
    glyphs[:, :, 100:140, 40:220] = 1
    latents, noise = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    context = torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([500])
    noisy = parts["scheduler"].add_noise(latents, noise, t)
    res = writenet(noisy, t, context, glyphs, glyphs, torch.zeros(1, 4, 32, 32))
    eps = unet(
        noisy,
        t,
        context,
        down_block_additional_residuals=res.down_block_res_samples,
        mid_block_additional_residual=res.mid_block_res_sample,
    ).sample
    loss = torch.nn.functional.mse_loss(eps, noise)
    loss.backward()
    optimizer.step()
    frozen_grads = sum(p.grad is not None for p in unet.parameters())
    print(f"WriteNet {sum(p.numel() for p in writenet.parameters()):,} params, 13 residuals")
    print(f"AttnX    {sum(p.numel() for p in attnx.parameters()):,} params in {len(attnx.layout)} transformer blocks")
    print(f"loss {loss.item():.4f}; frozen UNet tensors with gradients: {frozen_grads}")
    print(f"smoke run OK in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
