"""Console entry points of the data pipeline (thin: parse arguments, call the library)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _common_data_args(ap):
    ap.add_argument("--train_data", nargs="+", required=True, help="AnyWord annotation JSON file(s)")
    ap.add_argument("--wm_thresh", type=float, default=1.0)
    ap.add_argument("--dataset_percent", type=float, default=1.0)
    ap.add_argument("--cache_dir", default=None)


def make_demo_data_main(argv=None):
    """anytext2-make-demo-data --out DIR --n N [--seed S] [--with_faults]"""
    from .synth import make_demo_data

    ap = argparse.ArgumentParser(description="Write synthetic AnyWord-format data (images + data_v1.2b.json).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--with_faults", action="store_true", help="append broken records (for robustness checks)")
    a = ap.parse_args(argv)
    print(make_demo_data(a.out, a.n, a.seed, a.resolution, a.with_faults))
    return 0


def export_main(argv=None):
    """anytext2-export-dataset --train_data JSON [JSON ...] --output_dir DIR [--push_to_hub REPO]"""
    from .anyword import export_parquet, load_anyword

    ap = argparse.ArgumentParser(description="Export AnyWord annotations (+ images) to Parquet shards / the Hub.")
    _common_data_args(ap)
    ap.add_argument("--validation_data", nargs="*", default=[])
    ap.add_argument("--validation_fraction", type=float, default=0.0)
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--output_dir", default=None)
    ap.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
    ap.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    ap.add_argument("--no_embed_images", action="store_true", help="store image paths only (local use)")
    ap.add_argument("--max_rows_per_shard", type=int, default=10000)
    a = ap.parse_args(argv)
    if not a.output_dir and not a.push_to_hub:
        ap.error("give --output_dir and/or --push_to_hub")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dd = load_anyword(
        a.train_data,
        a.validation_data,
        wm_thresh=a.wm_thresh,
        percent=a.dataset_percent,
        validation_fraction=a.validation_fraction,
        split_seed=a.split_seed,
        cache_dir=a.cache_dir,
    )
    written = export_parquet(
        dd,
        a.output_dir,
        embed_images=not a.no_embed_images,
        max_rows_per_shard=a.max_rows_per_shard,
        push_to_hub=a.push_to_hub,
        private=not a.public,
    )
    for split, paths in written.items():
        print(f"{split}: {len(dd[split])} rows in {len(paths)} shard(s) under {a.output_dir}")
    if a.push_to_hub:
        print(f"pushed to https://huggingface.co/datasets/{a.push_to_hub}")
    return 0


def preview_main(argv=None):
    """anytext2-preview-dataset --train_data JSON [JSON ...] --output_dir DIR --num_samples N [--seed S]"""
    from .anyword import load_anyword
    from .preview import preview_image
    from .sample import AnyText2TrainDataset, DataConfig, FaultCounter

    ap = argparse.ArgumentParser(description="Write one PNG per rendered training sample, then a fault summary.")
    _common_data_args(ap)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--num_samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--mask_ratio", type=float, default=0.0)
    ap.add_argument("--font_hint_prob", type=float, default=0.8)
    ap.add_argument("--color_prob", type=float, default=1.0)
    ap.add_argument("--font_config", default=None, help="language->fonts JSON/YAML (default: bundled fonts)")
    ap.add_argument("--no_rand_font", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = DataConfig(
        resolution=a.resolution,
        mask_ratio=a.mask_ratio,
        font_hint_prob=a.font_hint_prob,
        color_prob=a.color_prob,
        font_config=a.font_config,
        rand_font=not a.no_rand_font,
    )
    rows = load_anyword(a.train_data, wm_thresh=a.wm_thresh, percent=a.dataset_percent, cache_dir=a.cache_dir)["train"]
    ds = AnyText2TrainDataset(rows, cfg, seed=a.seed)
    ds.set_epoch(a.epoch)
    os.makedirs(a.output_dir, exist_ok=True)
    counter = FaultCounter()
    n = min(a.num_samples, len(ds))
    for i in range(n):
        s = ds[i]
        counter.update([s])
        preview_image(s).save(os.path.join(a.output_dir, f"sample_{i:05d}.png"))
    print(f"wrote {n} previews to {a.output_dir}")
    print(counter.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(preview_main())
