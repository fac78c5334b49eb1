"""Per-image latency of AnyText2Pipeline: fast control vs WriteNet at every step vs diffusers' ControlNet pipeline.

Three pipelines on the same UNet, VAE, CLIP and scheduler, same steps, resolution, prompts and CFG:

  (a) ``AnyText2Pipeline`` as shipped: WriteNet once per CFG branch (fast control);
  (b) the same pipeline with ``recompute_controlnet_every_step = True``: identical math, WriteNet runs on
      every step as the reference would without its cache;
  (c) diffusers' ``StableDiffusionControlNetPipeline`` with ``ControlNetModel.from_unet(unet)`` (same
      size as WriteNet), which runs its ControlNet at every step.

(a) and (b) include everything a call does (rendering the glyphs, the OCR-based text embedding, encoding
the masked image). Random weights: only the timings mean anything.

    python benchmarks/bench_pipeline.py                        # tiny components, CPU, 128 px
    python benchmarks/bench_pipeline.py --size sd15 --device cuda --resolution 512 --dtype float16

Last line: one JSON object with ``speedup_vs_per_step_writenet`` = t(b) / t(a) and
``ratio_vs_controlnet_pipeline`` = t(a) / t(c) (below 1: faster than the ControlNet pipeline).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel, AnyText2Pipeline
from anytext2_diffusers.configs import sd15_config
from anytext2_diffusers.testing import tiny_pipeline, tiny_tokenizer

PROMPT = "a shop sign on a brick wall"
NEGATIVE = "low quality"


def sd15_pipeline(seed: int = 0) -> AnyText2Pipeline:
    """SD1.5-size UNet/VAE/CLIP with random weights (no download), the tiny pipeline's tokenizer and OCR."""
    small = tiny_pipeline(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(sd15_config("unet"))
    vae = AutoencoderKL.from_config(sd15_config("vae"))
    te_cfg = {k: v for k, v in sd15_config("text_encoder").items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    from anytext2_diffusers import AnyText2TextEmbeddingModel

    text_embedding = AnyText2TextEmbeddingModel.from_text_encoder(text_encoder, font_recognizer=small.ocr)
    pipe = AnyText2Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        unet=unet,
        controlnet=AnyText2ControlNetModel.from_unet(unet),
        attnx=AnyText2AttnXModel.from_unet(unet),
        scheduler=small.scheduler,
        text_embedding=text_embedding,
        ocr=small.ocr,
    )
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return pipe


def line_mask(size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[size // 10 : size // 3, size // 10 : size - size // 10] = 255
    m[size // 2 : size * 3 // 4, size // 6 : size - size // 6] = 255
    return m


def timed(fn, repeats: int, device: str) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable numbers on a shared box)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    pipe = tiny_pipeline(0) if args.size == "tiny" else sd15_pipeline(0)
    if args.device != "cpu" or dtype != torch.float32:
        pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    controlnet = ControlNetModel.from_unet(pipe.unet).to(args.device, dtype).eval()  # same size as WriteNet
    sd_cn = StableDiffusionControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=controlnet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd_cn.set_progress_bar_config(disable=True)
    R = args.resolution
    mask = line_mask(R)
    hint = PIL.Image.fromarray(np.repeat(mask[..., None], 3, axis=2))
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="np")

    def ours():
        pipe(
            prompt=PROMPT,
            texts=["OPEN", "Coffee"],
            positions=mask,
            negative_prompt=NEGATIVE,
            added_prompt="",
            generator=torch.Generator().manual_seed(0),
            **common,
        )

    def per_step():
        pipe.recompute_controlnet_every_step = True
        try:
            ours()
        finally:
            pipe.recompute_controlnet_every_step = False

    def diffusers_controlnet():
        sd_cn(
            prompt=PROMPT,
            image=hint,
            negative_prompt=NEGATIVE,
            height=R,
            width=R,
            generator=torch.Generator().manual_seed(0),
            **common,
        )

    results = {}
    results["anytext2_fast_control"] = timed(ours, args.repeats, args.device)
    results["anytext2_writenet_every_step"] = timed(per_step, args.repeats, args.device)
    pipe.attnx.detach()  # (c) is the plain SD UNet + ControlNet; (a) and (b) pay for AttnX
    try:
        results["diffusers_controlnet_pipeline"] = timed(diffusers_controlnet, args.repeats, args.device)
    finally:
        pipe.attach_attnx()
    med = {k: statistics.median(v) for k, v in results.items()}

    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.device}"
    if args.device == "cuda":
        machine += f" ({torch.cuda.get_device_name()})"
    elif args.device == "cpu":
        machine += f", {args.threads} thread(s)"
    print(
        f"AnyText2Pipeline benchmark: {args.size} components, {R}x{R}, {args.steps} steps, CFG "
        f"{args.guidance_scale}, batch 1, {args.dtype}, {machine}; median of {args.repeats} after a warm-up"
    )
    print(f"{'pipeline':34s} {'s / image':>10s} {'vs (a)':>8s}")
    for name, t in med.items():
        print(f"{name:34s} {t:10.3f} {t / med['anytext2_fast_control']:8.2f}")
    summary = {
        "speedup_vs_per_step_writenet": med["anytext2_writenet_every_step"] / med["anytext2_fast_control"],
        "ratio_vs_controlnet_pipeline": med["anytext2_fast_control"] / med["diffusers_controlnet_pipeline"],
        "seconds_per_image": med,
        "size": args.size,
        "resolution": R,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "dtype": args.dtype,
        "machine": machine,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
