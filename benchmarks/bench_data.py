"""Data pipeline throughput and size: samples/s in one process and in a DataLoader, bytes per sample.

    python benchmarks/bench_data.py --train_data DATA.json [DATA2.json ...] --samples 200 --num_workers 2

Without --train_data it renders synthetic demo data (anytext2-make-demo-data, 2-7 lines per image,
about 3.7 selected lines per sample like AnyWord-3M's 3.75). Settings are the
reference train.py's (DataConfig defaults). The last line printed is one JSON object.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from anytext2_diffusers.data import AnyText2TrainDataset, Collator, DataConfig, load_anyword, make_demo_data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train_data", nargs="*", default=None)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=3)  # train.py batch_size
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--demo_images", type=int, default=48)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    files = a.train_data or [make_demo_data(os.path.join(tmp, "demo"), a.demo_images, seed=0, lines_per_image=(2, 7))]
    rows = load_anyword(files, cache_dir=os.path.join(tmp, "hf"))["train"]
    ds = AnyText2TrainDataset(rows, DataConfig(resolution=a.resolution), seed=0)
    n = min(a.samples, 10**9)
    ds[0]  # warm fonts
    t, c = time.perf_counter(), time.process_time()
    lines = 0
    for i in range(n):
        lines += ds[i % len(ds)].n_lines
    one_proc = n / (time.perf_counter() - t)
    cpu_ms = (time.process_time() - c) / n * 1000  # independent of other load on the machine

    collate = Collator(ds.config.max_lines)
    dl = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, [i % len(ds) for i in range(n)]),
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        collate_fn=collate,
    )
    nbytes, count = 0, 0
    t = time.perf_counter()
    for b in dl:
        nbytes += b.nbytes()
        count += len(b)
    loader = count / (time.perf_counter() - t)
    result = {
        "samples_per_s": round(loader, 2),
        "samples_per_s_1proc": round(one_proc, 2),
        "num_workers": a.num_workers,
        "bytes_per_sample": int(nbytes / count),
        "cpu_ms_per_sample": round(cpu_ms, 2),
        "lines_per_sample": round(lines / n, 2),
        "samples": n,
        "resolution": a.resolution,
        "cpu_threads": torch.get_num_threads(),
    }
    print(
        f"1 process: {one_proc:.1f} samples/s ({cpu_ms:.1f} ms CPU/sample); "
        f"DataLoader({a.num_workers} workers): {loader:.1f} samples/s; "
        f"{nbytes / count / 2**20:.2f} MiB/sample"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
