"""Seconds per optimizer step and peak memory: the AnyText2 training step vs diffusers' ControlNet step.

Variants (one function each, returning a dict; add rows by adding functions to ``VARIANTS``):

  anytext2    ``AnyText2TrainingModel`` as the trainer runs it: VAE posteriors of image + masked image,
              the image caption through CLIP, the text embedding (OCR encoder on the glyph lines, font
              recognizer, position/colour) and the text caption through CLIP again, WriteNet once, the
              UNet with AttnX, the masked MSE (+ OCR losses with ``--loss_alpha/--loss_beta``), AdamW.
  controlnet  ``examples/controlnet/train_controlnet.py``'s step on the same UNet, batch and resolution:
              ``ControlNetModel.from_unet(unet)`` with a conditioning image (the glyph image), VAE
              encode, noise, UNet with the residuals, MSE, AdamW over the ControlNet.

Each variant runs in its own process (so that peak RSS on the CPU is its own): median seconds of
``--steps`` optimizer steps after ``--warmup``, peak memory (RSS on CPU, max allocated on GPU), trainable
parameters, optimizer-state bytes, images/s, FLOPs per step (``torch.utils.flop_counter``) and, with
``--peak_tflops``, model FLOPs utilisation. Random weights: only timings and memory mean anything.

    python benchmarks/bench_train_step.py                       # tiny stack, CPU, 128 px, batch 2
    python benchmarks/bench_train_step.py --size sd15 --device cuda --dtype float16 --resolution 512 \\
        --batch_size 3 --peak_tflops 989
    python benchmarks/bench_train_step.py --profile             # + torch.profiler table of the AnyText2 step

Last line: one JSON object (``anytext2_step_s``, ``controlnet_step_s``, ``ratio_vs_controlnet``,
``*_peak_mb``, ``*_trainable_params``, ``*_optimizer_state_bytes`` ...).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "sd15"], default="tiny", help="tiny random stack or SD1.5 shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="frozen weights + autocast dtype")
    p.add_argument("--resolution", type=int, default=None, help="default: 128 (tiny), 512 (sd15)")
    p.add_argument("--batch_size", type=int, default=None, help="default: 2 (tiny), 3 (sd15)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--loss_alpha", type=float, default=0.0, help="OCR perceptual loss weight (0: off)")
    p.add_argument("--loss_beta", type=float, default=0.0, help="OCR CTC loss weight (0: off)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--cache_latents", action="store_true", help="AnyText2 with the latent cache (warm)")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak, for model FLOPs utilisation")
    p.add_argument("--variants", nargs="+", default=None, help="subset of " + ", ".join(VARIANTS))
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of the AnyText2 step")
    args = p.parse_args(argv)
    args.resolution = args.resolution or (128 if args.size == "tiny" else 512)
    args.batch_size = args.batch_size or (2 if args.size == "tiny" else 3)
    return args


# ------------------------------------------------------------------------------------------------ set-up
def training_config(args, data_json: str, output_dir: str):
    from anytext2_diffusers.training import TrainingConfig

    return TrainingConfig(
        tiny_model=args.size == "tiny",
        train_data=[data_json],
        output_dir=output_dir,
        cache_dir=os.path.join(output_dir, "hf_cache"),
        resolution=args.resolution,
        train_batch_size=args.batch_size,
        mask_ratio=0.0,
        loss_alpha=args.loss_alpha,
        loss_beta=args.loss_beta,
        cache_latents=args.cache_latents,
        channels_last=args.channels_last,
        report_to="none",
    )


def sd15_base(seed: int = 0) -> dict:
    """SD1.5-shaped UNet/VAE/CLIP with random weights (offline), the tiny tokenizer, the SD1.5 scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anytext2_diffusers.configs import sd15_config
    from anytext2_diffusers.testing import sd15_scheduler, tiny_tokenizer

    torch.manual_seed(seed)
    te_cfg = {k: v for k, v in sd15_config("text_encoder").items() if not k.startswith("_")}
    return dict(
        unet=UNet2DConditionModel.from_config(sd15_config("unet")),
        vae=AutoencoderKL.from_config(sd15_config("vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**te_cfg)),
        tokenizer=tiny_tokenizer(),
        scheduler=sd15_scheduler(),
    )


def base_parts(args) -> dict:
    """The SD1.5 parts both variants share (same seed: the same UNet)."""
    from anytext2_diffusers.testing import tiny_components

    return tiny_components(seed=0) if args.size == "tiny" else sd15_base()


def make_batch(args, workdir: str):
    """(config, one training batch) rendered from synthetic AnyWord-format data."""
    from anytext2_diffusers.data import Collator, make_demo_data
    from anytext2_diffusers.training.data import build_datasets

    data = make_demo_data(
        os.path.join(workdir, "data"), n=args.batch_size, seed=0, resolution=max(256, args.resolution)
    )
    config = training_config(args, data, os.path.join(workdir, "out"))
    dataset, _ = build_datasets(config)
    return config, Collator(config.max_lines)([dataset[(0, i)] for i in range(args.batch_size)]).to(args.device)


# ------------------------------------------------------------------------------------------------ measuring
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(args):
    return torch.autocast(torch.device(args.device).type, dtype=DTYPES[args.dtype], enabled=args.dtype != "float32")


def measure(args, step, params: list, optimizer) -> dict:
    """Median step time, peak memory, FLOPs, parameter and optimizer-state sizes of ``step()``."""
    from torch.utils.flop_counter import FlopCounterMode

    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup and args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(args.device)
        t0 = time.perf_counter()
        step()
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    step_s = statistics.median(times)
    out = dict(
        step_s=step_s,
        step_s_all=times,
        images_per_s=args.batch_size / step_s,
        peak_mb=peak_mb,
        tflop_per_step=counter.get_total_flops() / 1e12,
        trainable_params=sum(p.numel() for p in params),
        optimizer_state_bytes=state_bytes,
    )
    if args.peak_tflops:
        out["mfu"] = out["tflop_per_step"] / step_s / args.peak_tflops
    return out


# ------------------------------------------------------------------------------------------------ variants
def anytext2_variant(args) -> dict:
    from anytext2_diffusers.training.components import build_training_model
    from anytext2_diffusers.training.step import sample_generators

    with tempfile.TemporaryDirectory() as workdir:
        config, batch = make_batch(args, workdir)
        model, groups, parts = build_training_model(config, args.device, DTYPES[args.dtype], base=base_parts(args))
        if args.gradient_checkpointing:
            parts["unet"].enable_gradient_checkpointing()
            parts["controlnet"].enable_gradient_checkpointing()
        params = [p for group in groups.values() for _, p in group]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        counter = {"step": 0}

        def step():
            with _autocast(args):
                out = model(batch, sample_generators(0, counter["step"], batch.index))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter["step"] += 1

        result = measure(args, step, params, optimizer)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile, record_function

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
            with profile(activities=activities) as prof:
                for name in ("encode_images", "encode_lines_and_captions"):
                    fn = getattr(model, name)

                    def wrapped(*a, _fn=fn, _name=name, **k):
                        with record_function(f"anytext2::{_name}"):
                            return _fn(*a, **k)

                    setattr(model, name, wrapped)
                step()
            sort = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)
    return result


def controlnet_variant(args) -> dict:
    from diffusers import ControlNetModel

    with tempfile.TemporaryDirectory() as workdir:
        _, batch = make_batch(args, workdir)
    device, dtype = args.device, DTYPES[args.dtype]
    parts = base_parts(args)
    unet, vae, text_encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    for model in (unet, vae, text_encoder):  # frozen, in the weight dtype (as train_controlnet.py)
        model.requires_grad_(False).to(device, dtype)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    controlnet = ControlNetModel.from_unet(unet).to(device, torch.float32).train()  # float32 master weights
    if args.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    if args.channels_last:
        controlnet.to(memory_format=torch.channels_last)
    scheduler = parts["scheduler"]
    params = [p for p in controlnet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    images = batch.image_float(dtype)
    cond = batch.glyphs.float().expand(-1, 3, -1, -1)
    cond = F.interpolate(cond, size=images.shape[-2:], mode="nearest").to(device, dtype)
    ids = tokenizer(
        batch.image_caption,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    generator = torch.Generator().manual_seed(0)

    def step():
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor
            context = text_encoder(ids, return_dict=False)[0]
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        with _autocast(args):
            down, mid = controlnet(noisy, t, context, controlnet_cond=cond, return_dict=False)
            pred = unet(
                noisy, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid
            ).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return measure(args, step, params, optimizer)


VARIANTS = {"anytext2": anytext2_variant, "controlnet": controlnet_variant}


def _run_variant(name: str, args) -> dict:
    """In a fresh process: its peak RSS is this variant's alone."""
    torch.set_num_threads(args.threads)
    return VARIANTS[name](args)


def machine(args) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device))
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = args.variants or list(VARIANTS)
    ctx = mp.get_context("spawn")
    rows = {}
    for name in names:
        with ctx.Pool(1) as pool:
            rows[name] = pool.apply(_run_variant, (name, args))
        r = rows[name]
        print(
            f"{name:>11}: {r['step_s']:.3f} s/step, {r['images_per_s']:.2f} img/s, peak {r['peak_mb']:.0f} MB, "
            f"{r['trainable_params'] / 1e6:.2f} M trainable, "
            f"optimizer state {r['optimizer_state_bytes'] / 2**20:.1f} MiB, "
            f"{r['tflop_per_step'] * 1e3:.1f} GFLOP/step",
            file=sys.stderr,
        )
    summary = dict(
        size=args.size,
        device=args.device,
        machine=machine(args),
        dtype=args.dtype,
        resolution=args.resolution,
        batch_size=args.batch_size,
        steps=args.steps,
        torch=torch.__version__,
    )
    for name, r in rows.items():
        summary.update({f"{name}_{k}": v for k, v in r.items()})
    if "anytext2" in rows and "controlnet" in rows:
        summary["ratio_vs_controlnet"] = rows["anytext2"]["step_s"] / rows["controlnet"]["step_s"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
