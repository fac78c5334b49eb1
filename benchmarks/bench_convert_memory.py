"""Peak memory of ``convert_checkpoint.py --from_original`` on a full-size (SD1.5) AnyText2 checkpoint.

    python benchmarks/bench_convert_memory.py [--workdir DIR] [--format safetensors|ckpt] [--dtype fp32]

Builds a random checkpoint in the reference key layout (SD1.5-shaped UNet / WriteNet / AttnX / VAE / CLIP,
PP-OCRv3 recognizer and text embedding, half precision as released; written through the package's own
``to_original_state_dict``) in one child process, then converts it in another, which reports its peak RSS
(``ru_maxrss``). Needs about 10 GB of free memory and 8 GB of disk. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def make_checkpoint(path: str, clip_dir: str) -> None:
    """Random SD1.5-size AnyText2 weights in the reference layout (half precision) + a CLIP folder."""
    import torch
    from safetensors.torch import save_file

    from anytext2_diffusers.conversion.original import SCHEDULE_KEYS
    from anytext2_diffusers.conversion.sd15 import anytext2_parts, default_original_config, placement_from_original
    from anytext2_diffusers.conversion.to_original import to_original_state_dict
    from anytext2_diffusers.models import PPOCRRecognizer

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train_step import sd15_base

    cfg = default_original_config()
    base = sd15_base()
    parts = anytext2_parts(base, PPOCRRecognizer(), **placement_from_original(cfg, base["unet"]))
    for name in ("unet", "attnx", "controlnet", "vae", "text_encoder", "text_embedding", "ocr"):
        parts[name].to(torch.float16)  # half precision as the released checkpoints; keeps this step small
    state = to_original_state_dict(
        cfg, **{k: parts[k] for k in ("unet", "attnx", "controlnet", "vae", "text_encoder", "text_embedding", "ocr")}
    )
    state = {k: (v if k in SCHEDULE_KEYS else v.to(torch.float16)).contiguous() for k, v in state.items()}
    if path.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    parts["tokenizer"].save_pretrained(os.path.join(clip_dir, "tokenizer"))
    parts["text_encoder"].config.save_pretrained(os.path.join(clip_dir, "text_encoder"))


def convert(path: str, clip_dir: str, out: str, dtype: str) -> None:
    """The converter, in this process; prints its peak RSS as JSON."""
    from anytext2_diffusers.conversion.pipeline_io import convert_original_to_pipeline

    start = time.perf_counter()
    convert_original_to_pipeline(path, out, None, clip_dir, dtype)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_gb": round(peak_kb / 2**20, 2), "seconds": round(time.perf_counter() - start, 1)}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="where the checkpoint and output go (default: a temp dir)")
    p.add_argument("--format", choices=["safetensors", "ckpt"], default="safetensors")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="output precision")
    p.add_argument("--_make", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_convert", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._make:
        return make_checkpoint(*args._make)
    if args._convert:
        return convert(*args._convert)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        ckpt = os.path.join(tmp, f"anytext2_random.{args.format}")
        clip_dir, out = os.path.join(tmp, "clip"), os.path.join(tmp, "converted")
        subprocess.run([sys.executable, __file__, "--_make", ckpt, clip_dir], check=True)
        result = subprocess.run(
            [sys.executable, __file__, "--_convert", ckpt, clip_dir, out, args.dtype],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        figures.update(
            checkpoint_gb=round(os.path.getsize(ckpt) / 2**30, 2), format=args.format, output_dtype=args.dtype
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
