"""Optimizer-state memory of --use_8bit_adam vs torch's AdamW for the full-size trainable WriteNet + AttnX.

Parameter shapes come from the SD1.5-size models built on the meta device (no download); each optimizer gets
fresh random float32 parameters of those shapes and random gradients, takes one step, and its state tensors
are counted. Runs on a CPU (bitsandbytes >= 0.50) or, with --device cuda, on a GPU (then also the peak
memory of the step). Last line: one JSON object.

    python benchmarks/bench_8bit_adam.py [--device cuda] [--components writenet attnx]
"""

import argparse
import json
import time

import torch
from diffusers import UNet2DConditionModel

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel
from anytext2_diffusers.configs import sd15_config


def shapes(components) -> list:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_config("unet"))
        models = {
            "writenet": AnyText2ControlNetModel.from_unet(unet, load_weights_from_unet=False),
            "attnx": AnyText2AttnXModel.from_unet(unet, load_weights_from_unet=False),
        }
    return [tuple(p.shape) for name in components for p in models[name].parameters()]


def state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def measure(make, param_shapes, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in param_shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-3
    optimizer = make(params)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"state_bytes": state_bytes(optimizer), "step_s": round(time.perf_counter() - start, 3)}
    if device == "cuda":
        out["step_peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    del optimizer, params
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--components", nargs="+", default=["writenet", "attnx"], choices=["writenet", "attnx"])
    args = ap.parse_args()
    import bitsandbytes as bnb

    param_shapes = shapes(args.components)
    n = sum(torch.Size(s).numel() for s in param_shapes)
    kw = dict(lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    adamw = measure(lambda p: torch.optim.AdamW(p, **kw), param_shapes, args.device)
    adam8 = measure(lambda p: bnb.optim.AdamW8bit(p, **kw), param_shapes, args.device)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "components": args.components,
        "parameters": n,
        "adamw": adamw,
        "adamw8bit": adam8,
        "state_ratio": round(adam8["state_bytes"] / adamw["state_bytes"], 4),
        "bitsandbytes": bnb.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
