"""What the demo model predicts in one denoising step: a grid of the clean images its predictions imply.

For the first validation images (rows): the VAE's reconstruction of the source, then the clean image the
model's prediction implies at each timestep (``demo_model.denoised_previews``), decoded with the recipe's
final VAE (the ``vae_decoder`` stage's when done). Words that read at small t but blur at large t mean the
model knows the letters, and generation from pure noise is where they are lost.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_denoise.py --work_dir demo-train --stage focus \\
        --images clean_heldout/data_v1.2b.json --out denoise.png
"""

from __future__ import annotations

import argparse
import os

from anytext2_diffusers import demo_model as dm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work_dir", required=True, help="the recipe's work folder (init stage done)")
    p.add_argument("--stage", default="anytext2", choices=("anytext2", "focus"), help="loop stage to read")
    p.add_argument("--checkpoint", default=None, help="loop checkpoint folder (default: the stage's latest)")
    p.add_argument("--images", default=None, help="AnyWord JSON (default: the recipe's held-out-word images)")
    p.add_argument("--rows", type=int, default=6)
    p.add_argument("--timesteps", default="300,500,800,950")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args()
    from diffusers import AutoencoderKL
    from PIL import Image

    timesteps = tuple(int(t) for t in args.timesteps.split(","))
    with dm.checkpoint_probe(args.work_dir, args.checkpoint, args.stage, args.images) as (ckpt, parts, config):
        decoder = os.path.join(args.work_dir, "vae_decoder", "vae")
        vae = AutoencoderKL.from_pretrained(decoder).eval() if os.path.isdir(decoder) else parts["vae"]
        grid = dm.denoised_previews(parts, config, vae, args.rows, timesteps)
    image = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(image).save(args.out)
    print(f"{args.out}: rows = images; columns = source (VAE), then t = {args.timesteps} ({os.path.abspath(ckpt)})")


if __name__ == "__main__":
    main()
