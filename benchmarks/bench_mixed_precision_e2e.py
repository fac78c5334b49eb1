"""fp16 / bf16 end to end on a GPU: the README demo trained with ``accelerate launch --mixed_precision``,
its pipeline folder loaded in that dtype and sampled; reports exit codes, wall times and whether every
generated pixel is finite (a NaN anywhere in training or sampling shows up here).

    python benchmarks/bench_mixed_precision_e2e.py                  # fp16, fp32 + the recipe's caches, bf16
    python benchmarks/bench_mixed_precision_e2e.py --modes fp16 --device cuda

Each mode prints one ``RESULT {...}`` line as it finishes (so a run cut short keeps what it measured); the
last line is one JSON object with every mode. On a CPU only ``no`` (fp32) runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}
# The demo recipe's speed options: run with fp32 so that the caches are exercised on the device too.
RECIPE_CACHES = ["--cache_latents", "--cache_ocr_necks", "1000", "--max_train_steps", "60"]


def run_mode(mode: str, device: str, root: str) -> dict:
    from anytext2_diffusers import AnyText2Pipeline

    extra = RECIPE_CACHES if mode == "no" else []
    out = os.path.join(root, f"demo-{mode}")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    command += ["--mixed_precision", mode, "examples/train_anytext2.py", "--demo", "--output_dir", out]
    command += ["--mixed_precision", mode, "--report_to", "none", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    entry = dict(train_rc=done.returncode, train_wall_s=round(time.perf_counter() - start, 1), extra=extra)
    if done.returncode != 0:
        entry["tail"] = (done.stdout + done.stderr)[-1500:]
        return entry
    pipe = AnyText2Pipeline.from_pretrained(out, torch_dtype=DTYPES[mode]).to(device)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:80, 16:112] = 255
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    image = pipe(
        prompt="a sign",
        texts=["OPEN"],
        positions=mask,
        height=128,
        width=128,
        num_inference_steps=20,
        generator=torch.Generator(device).manual_seed(0),
        output_type="np",
    ).images[0]
    sync()
    entry.update(sample_s=round(time.perf_counter() - start, 3), finite=bool(np.isfinite(image).all()))
    entry["unet_dtype"] = str(pipe.unet.dtype)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", nargs="+", default=None, choices=list(DTYPES), help="default: fp16 no bf16 (GPU)")
    args = p.parse_args()
    modes = args.modes or (["fp16", "no", "bf16"] if args.device.startswith("cuda") else ["no"])
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for mode in modes:
            results[mode] = run_mode(mode, args.device, root)
            print("RESULT", json.dumps({mode: results[mode]}), flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(json.dumps(dict(results, device=name, torch=torch.__version__)))


if __name__ == "__main__":
    main()
