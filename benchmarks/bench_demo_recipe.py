"""Seconds per step of the demo-model recipe's two training stages, to plan its wall time.

Measured as process CPU time (``time.process_time``), so that the figure does not depend on how busy a
shared machine is (on an idle machine with one thread, wall time per step is about the same), and as wall
time, the figure that counts where the loop runs on a GPU (Accelerate picks it when there is one).
``vae``: the VAE stage's step (batch 16 random 64 px crops of 128 px images). ``anytext2``: the suite's
loop with the recipe's options (batch 8, 128 px, ``--no-sd_locked``), as the difference of two runs of N
and 2N steps (so set-up, final validation and saving cancel out). ``--resolution 256`` times the same loop
on 256 px images (issue 20's GPU comparison); ``--skip_vae`` leaves out the VAE stage, which trains on
the CPU only.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_recipe.py --steps 3
    python benchmarks/bench_demo_recipe.py --steps 30 --skip_vae --resolution 256   # on a GPU machine

Last line: one JSON object (``vae_cpu_s_per_step``, ``anytext2_cpu_s_per_step``,
``anytext2_wall_s_per_step``, projections in hours).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from anytext2_diffusers import demo_model as dm
from anytext2_diffusers.training.vae import VAETrainingConfig, train_vae


def vae_step(images, steps: int, tmp: str) -> float:
    train_vae(VAETrainingConfig(output_dir=os.path.join(tmp, "warm"), max_train_steps=1), images)
    start = time.process_time()
    train_vae(VAETrainingConfig(output_dir=os.path.join(tmp, "vae"), max_train_steps=steps), images)
    return (time.process_time() - start) / steps


def loop_time(work: str, data: dict, init: dict, steps: int, name: str, resolution: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of the recipe's loop for ``steps`` steps."""
    from anytext2_diffusers.training import main

    args = dm.anytext2_args(work, data, steps, init)
    args += ["--output_dir", os.path.join(work, name), "--report_to", "none", "--validation_num_inference_steps", "1"]
    args += ["--resolution", str(resolution)]  # the last occurrence wins
    cpu, wall = time.process_time(), time.perf_counter()
    if main(args) != 0:
        raise RuntimeError("training failed")
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--vae_steps", type=int, default=6000, help="recipe steps to project")
    p.add_argument("--anytext2_steps", type=int, default=20000, help="recipe steps to project")
    p.add_argument("--resolution", type=int, default=dm.RESOLUTION, help="image size of the loop's data")
    p.add_argument("--skip_vae", action="store_true", help="time the loop only")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_vae:  # the recipe's VAE, untrained, as bench_demo_step.py builds it
            from bench_demo_step import make_work

            data, init = make_work(tmp, 32)
        else:
            data = dm.stage_data(tmp, n_train=32, n_heldout=2)
        if args.resolution != dm.RESOLUTION:
            from anytext2_diffusers.data import make_demo_data

            data["train"] = make_demo_data(os.path.join(tmp, "train_r"), 32, 0, args.resolution, lines_per_image=(1, 3))
        out = dict(threads=torch.get_num_threads(), resolution=args.resolution)
        if torch.cuda.is_available():
            out["device"] = torch.cuda.get_device_name()
        if not args.skip_vae:
            images = torch.randint(0, 256, (32, 3, 128, 128), dtype=torch.uint8)
            vae_s = vae_step(images, args.steps, tmp)
            out.update(vae_cpu_s_per_step=round(vae_s, 3), vae_stage_cpu_h=round(vae_s * args.vae_steps / 3600, 2))
            init = dm.stage_init(tmp, data)
        short = loop_time(tmp, data, init, args.steps, "a", args.resolution)
        long = loop_time(tmp, data, init, 2 * args.steps, "b", args.resolution)
    loop_cpu, loop_wall = ((b - a) / args.steps for a, b in zip(short, long))
    out.update(
        anytext2_cpu_s_per_step=round(loop_cpu, 4),
        anytext2_wall_s_per_step=round(loop_wall, 4),
        anytext2_stage_cpu_h=round(loop_cpu * args.anytext2_steps / 3600, 2),
        anytext2_stage_wall_h=round(loop_wall * args.anytext2_steps / 3600, 2),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
