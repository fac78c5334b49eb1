"""Seconds per training step of the demo recipe's AnyText2 stage, with and without the speed options, A/B
interleaved in one process (so a busy machine slows every variant alike).

Each variant is the recipe's loop configuration (``demo_model.anytext2_args``: batch 8, 128 px, 3 lines,
``--no-sd_locked --no-train_font_ocr``, fp32, CPU, the recipe's 16-channel VAE with random weights) plus
its own options, built from the same initial weights, with its own optimizer. Every round runs one step of
each variant in turn, on the same batch with the same per-sample draws (forward, backward, AdamW). The
first ``--warmup_epochs`` epochs over ``--records`` synthetic images fill the caches; then ``--steps``
rounds are timed. With a small data set every input has been seen after the warm-up, so the figures are
the cached steady state; the hit rates reached are printed (the recipe's 4000 images reach lower ones,
docs/demo_model.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_step.py --steps 30
    python benchmarks/bench_demo_step.py --variants base:threads=1 base:threads=2   # thread counts

A variant is ``name[:threads=N]``; names: ``base`` (the recipe as it was), ``necks`` (``--cache_ocr_necks``),
``latents`` (``--cache_latents``), ``both``. Last line: one JSON object with, per variant, the median wall
and CPU seconds per step, the hit rates of the timed steps (latent: target images; neck: recognizer
reads, ``null`` without the neck cache), and the largest loss difference from the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from anytext2_diffusers import demo_model as dm

OPTIONS = {
    "base": [],
    "necks": ["--cache_ocr_necks", "50000"],
    "latents": ["--cache_latents"],
    "both": ["--cache_ocr_necks", "50000", "--cache_latents"],
}


def make_work(tmp: str, records: int) -> tuple[dict, dict]:
    """Demo data and an init pipeline folder with the recipe's (untrained) 16-channel VAE."""
    from diffusers import AutoencoderKL

    from anytext2_diffusers.training.vae import vae_config

    data = dm.stage_data(tmp, n_train=records, n_heldout=2)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config(dm.vae_config_for(tmp, data, steps=1)))
    vae.save_pretrained(os.path.join(tmp, "vae", "vae"))
    return data, dm.stage_init(tmp, data)


def build(tmp: str, data: dict, init: dict, extra: list[str]):
    from anytext2_diffusers.training.components import build_training_model
    from anytext2_diffusers.training.config import parse_args

    argv = dm.anytext2_args(tmp, data, 1, init) + ["--report_to", "none", *extra]
    config = parse_args(argv)
    model, groups, _ = build_training_model(config)
    params = [p for group in groups.values() for _, p in group]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    return config, model, optimizer


def step(model, optimizer, batch, step_index: int, threads: int) -> tuple[float, float, float]:
    from anytext2_diffusers.training.step import sample_generators

    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    out = model(batch, sample_generators(0, step_index, batch.index))
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu, float(out.loss.detach())


def counters(model) -> dict:
    necks = model.neck_cache
    return dict(
        latent_hits=model.latent_cache.hits,
        latent_misses=model.latent_cache.misses,
        neck_hits=necks.hits if necks is not None else 0,
        neck_misses=necks.misses if necks is not None else 0,
    )


def parse_variant(text: str) -> tuple[str, int]:
    name, _, rest = text.partition(":")
    if name not in OPTIONS:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(OPTIONS)}")
    threads = int(rest.split("=", 1)[1]) if rest.startswith("threads=") else torch.get_num_threads()
    return name, threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["base", "necks", "latents", "both"])
    p.add_argument("--records", type=int, default=64, help="synthetic training images (8 steps per epoch each 64)")
    p.add_argument("--warmup_epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed rounds (one step of every variant each)")
    args = p.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    from anytext2_diffusers.training.data import build_datasets, make_loader

    with tempfile.TemporaryDirectory() as tmp:
        data, init = make_work(tmp, args.records)
        runs = []
        for name, threads in variants:
            config, model, optimizer = build(tmp, data, init, OPTIONS[name])
            runs.append(dict(name=f"{name}:threads={threads}", threads=threads, model=model, optimizer=optimizer))
        train_set, _ = build_datasets(config)
        loader = make_loader(train_set, config, shuffle=True)
        warmup = args.warmup_epochs * len(loader)
        index, epoch = 0, 0
        while index < warmup + args.steps:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                for run in runs:
                    if index == warmup:  # counters at the start of the timed window
                        run["start"] = counters(run["model"])
                    wall, cpu, loss = step(run["model"], run["optimizer"], batch, index, run["threads"])
                    if index >= warmup:
                        run.setdefault("wall", []).append(wall)
                        run.setdefault("cpu", []).append(cpu)
                    run.setdefault("loss", []).append(loss)
                index += 1
                if index >= warmup + args.steps:
                    break
            epoch += 1
    first = runs[0]
    result = dict(records=args.records, warmup_steps=warmup, timed_steps=args.steps, batch=config.train_batch_size)
    for run in runs:
        end = counters(run["model"])
        timed = {k: end[k] - run["start"][k] for k in end}
        row = dict(
            wall_s_per_step=round(statistics.median(run["wall"]), 3),
            cpu_s_per_step=round(statistics.median(run["cpu"]), 3),
            max_abs_loss_diff_vs_first=max(abs(a - b) for a, b in zip(run["loss"], first["loss"])),
        )
        for name in ("latent", "neck"):  # hit rates of the timed steps
            seen = timed[f"{name}_hits"] + timed[f"{name}_misses"]
            row[f"{name}_hit_rate"] = round(timed[f"{name}_hits"] / seen, 3) if seen else None
        row["neck_entries"] = len(run["model"].neck_cache) if run["model"].neck_cache is not None else 0
        result[run["name"]] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
