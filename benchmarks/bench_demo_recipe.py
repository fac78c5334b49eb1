"""CPU seconds per step of the demo-model recipe's two training stages, to plan its wall time.

Measured as process CPU time (``time.process_time``), not wall time, so that the figure does not depend
on how busy a shared machine is; on an idle machine with one thread, wall time per step is about the
same. ``vae``: the VAE stage's step (batch 16 random 64 px crops of 128 px images). ``anytext2``: the
suite's loop with the recipe's options (batch 8, 128 px, ``--no-sd_locked``), as the difference of two
runs of N and 2N steps (so set-up, final validation and saving cancel out).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_recipe.py --steps 3

Last line: one JSON object (``vae_cpu_s_per_step``, ``anytext2_cpu_s_per_step``, projections in hours).
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


def loop_cpu(work: str, data: dict, init: dict, steps: int, name: str) -> float:
    from anytext2_diffusers.training import main

    args = dm.anytext2_args(work, data, steps, init)
    args += ["--output_dir", os.path.join(work, name), "--report_to", "none", "--validation_num_inference_steps", "1"]
    start = time.process_time()
    if main(args) != 0:
        raise RuntimeError("training failed")
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--vae_steps", type=int, default=6000, help="recipe steps to project")
    p.add_argument("--anytext2_steps", type=int, default=20000, help="recipe steps to project")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dm.stage_data(tmp, n_train=32, n_heldout=2)
        images = torch.randint(0, 256, (32, 3, 128, 128), dtype=torch.uint8)
        vae_s = vae_step(images, args.steps, tmp)
        init = dm.stage_init(tmp, data)
        short = loop_cpu(tmp, data, init, args.steps, "a")
        long = loop_cpu(tmp, data, init, 2 * args.steps, "b")
    loop_s = (long - short) / args.steps
    print(
        json.dumps(
            dict(
                threads=torch.get_num_threads(),
                vae_cpu_s_per_step=round(vae_s, 3),
                anytext2_cpu_s_per_step=round(loop_s, 3),
                vae_stage_cpu_h=round(vae_s * args.vae_steps / 3600, 2),
                anytext2_stage_cpu_h=round(loop_s * args.anytext2_steps / 3600, 2),
            )
        )
    )


if __name__ == "__main__":
    main()
