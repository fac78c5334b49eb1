"""How far two parity packs of the same reference run (same recipe, seeds and batch; computed on different
CPUs) differ, per reference tensor: the CPU sensitivity the end-to-end parity tolerances are built on.

    python benchmarks/parity_pack_spread.py ../shared/parity ../shared/parity-intel [--min 1e-6]

Prints one line per tensor (max|a-b| / max(1, max|a|)) and, last, one JSON object with every value.
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pack_a")
    ap.add_argument("pack_b")
    ap.add_argument("--min", type=float, default=0.0, help="print only tensors whose spread is at least this")
    args = ap.parse_args()
    a = load_file(Path(args.pack_a) / "reference_outputs.safetensors")
    b = load_file(Path(args.pack_b) / "reference_outputs.safetensors")
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise SystemExit(f"the packs hold different tensors: {missing}")
    spread = {}
    for name in sorted(a):
        ta, tb = a[name].double(), b[name].double()
        if ta.shape != tb.shape:
            raise SystemExit(f"{name}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        spread[name] = (ta - tb).abs().max().item() / max(1.0, ta.abs().max().item()) if ta.numel() else 0.0
        if spread[name] >= args.min:
            print(f"{name:28s} {spread[name]:.3e}")
    print(json.dumps({"pack_a": Path(args.pack_a).name, "pack_b": Path(args.pack_b).name, "spread": spread}))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
