"""How far batched OCR (``recognize_crops``, crops padded to one width and run together) differs from reading
each crop alone, per torch thread count and batch size: the spread the batched-vs-single tests' tolerances
are built on (a batch takes other matmul/conv kernel blockings than one row).

    python benchmarks/ocr_batch_spread.py [--threads 1 2 4] [--batch_sizes 1 2 3 6] [--seeds 5]

Uses the real PP-OCRv3 recognizer converted from rapidocr's ONNX. Prints one line per setting and, last, one
JSON object: max |batched - single| of the necks and of the logits, absolute and relative to max |single|.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from anytext2_diffusers.models.ocr import convert_onnx, prepare_crops, recognize_crops

SHAPES = ((40, 300), (40, 50), (90, 60), (48, 200), (32, 400), (64, 120))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 3, 6])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    recognizer = convert_onnx().eval()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for seed in range(args.seeds):
            generator = torch.Generator().manual_seed(seed)
            crops = [torch.rand(3, h, w, generator=generator) * 255 for h, w in SHAPES]
            with torch.no_grad():
                single = [recognizer(prepare_crops([c])) for c in crops]
                for batch_size in args.batch_sizes:
                    out = recognize_crops(recognizer, crops, batch_size=batch_size)
                    row = dict(threads=threads, seed=seed, batch_size=batch_size)
                    for key, ours in (("neck", out.neck), ("logits", out.logits)):
                        ref = torch.stack([getattr(s, key)[0] for s in single])
                        diff = (ours - ref).abs().max().item()
                        row[f"{key}_abs"] = diff
                        row[f"{key}_rel"] = diff / ref.abs().max().item()
                    rows.append(row)
                    print(
                        f"threads {threads} seed {seed} batch {batch_size}: neck {row['neck_abs']:.2e} "
                        f"(rel {row['neck_rel']:.2e}), logits {row['logits_abs']:.2e}"
                    )
    worst = {k: max(r[k] for r in rows) for k in ("neck_abs", "neck_rel", "logits_abs", "logits_rel")}
    print(json.dumps({"worst": worst, "rows": rows}))


if __name__ == "__main__":
    main()
