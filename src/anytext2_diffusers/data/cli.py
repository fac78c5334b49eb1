"""Console entry points of the data pipeline (thin: parse arguments, check them, call the library).

Options come from dataclasses through the same mechanism as training (``utils.cli``): ``--output_dir``,
``--num_samples``, ``--push_to_hub`` + ``--hub_model_id`` + ``--hub_private``, ``--x`` / ``--no-x``
booleans, help text and one shown default per option. Old spellings still work with a deprecation line.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from ..utils.cli import ArgumentParser, add_dataclass_arguments, from_namespace, option, rewrite_deprecated


@dataclass
class DemoDataConfig:
    # --- output -----------------------------------------------------------------------------------
    output_dir: str | None = option(None, "Folder for the images and data_v1.2b.json (required).", type=str)
    num_samples: int = option(16, "Images to synthesise.")
    seed: int = option(0, "Seed of texts, fonts, colours and layouts.")
    resolution: int = option(512, "Image size (square).")
    with_faults: bool = option(False, "Append broken records (for robustness checks).")


@dataclass
class ExportConfig:
    # --- data -------------------------------------------------------------------------------------
    train_data: list = option([], "AnyWord annotation JSON file(s) (required).", nargs="+", type=str)
    validation_data: list = option([], "Validation annotation JSON file(s).", nargs="*", type=str)
    validation_fraction: float = option(0.0, "Hold out this fraction of train records as validation.")
    split_seed: int = option(0, "Seed of the validation hold-out.")
    wm_thresh: float = option(1.0, "Skip images whose watermark score exceeds this.")
    dataset_percent: float = option(1.0, "Use this fraction of every annotation file.")
    cache_dir: str | None = option(None, "datasets cache folder.", type=str)
    # --- output -----------------------------------------------------------------------------------
    output_dir: str | None = option(None, "Folder for the Parquet shards (this and/or --push_to_hub).", type=str)
    embed_images: bool = option(True, "Store the image bytes in the shards (--no-embed_images: paths, local use).")
    max_rows_per_shard: int = option(10000, "Rows per Parquet shard.")
    # --- hub --------------------------------------------------------------------------------------
    push_to_hub: bool = option(False, "Upload the shards as a Hub dataset (--hub_model_id).")
    hub_model_id: str | None = option(None, "Hub dataset repo id, user/name.", type=str)
    hub_private: bool = option(True, "Create the Hub repo as private (datasets default to private).")


@dataclass
class PreviewConfig:
    # --- data -------------------------------------------------------------------------------------
    train_data: list = option([], "AnyWord annotation JSON file(s) (required).", nargs="+", type=str)
    wm_thresh: float = option(1.0, "Skip images whose watermark score exceeds this.")
    dataset_percent: float = option(1.0, "Use this fraction of every annotation file.")
    cache_dir: str | None = option(None, "datasets cache folder.", type=str)
    # --- output -----------------------------------------------------------------------------------
    output_dir: str | None = option(None, "Folder for one PNG per rendered sample (required).", type=str)
    num_samples: int = option(16, "Samples to render.")
    # --- rendering --------------------------------------------------------------------------------
    seed: int = option(0, "Seed of the sample draws.")
    epoch: int = option(0, "Epoch whose draws to show.")
    resolution: int = option(512, "Training image size.")
    mask_ratio: float = option(0.0, "Probability of a text-editing (masked image) sample.")
    font_hint_prob: float = option(0.8, "Probability of a font hint per line.")
    color_prob: float = option(1.0, "Probability of keeping a line's colour.")
    font_config: str | None = option(None, "language->fonts JSON/YAML (default: bundled fonts).", type=str)
    rand_font: bool = option(True, "Random font per line (else each language's first font).")


def _parse(cls, prog: str, description: str, argv, renames=None, check=None):
    parser = ArgumentParser(prog=prog, description=description)
    add_dataclass_arguments(parser, cls)
    config = from_namespace(cls, parser.parse_args(rewrite_deprecated(argv, renames or {}, prog)))
    errors = check(config) if check else []
    if errors:
        parser.error("; ".join(errors))
    return config


def _data_errors(config) -> list[str]:
    errors = [] if config.train_data else ["--train_data is required"]
    for option_name in ("train_data", "validation_data"):
        for path in getattr(config, option_name, []):
            if not os.path.isfile(path):
                errors.append(f"--{option_name} {path}: file not found")
    if getattr(config, "font_config", None) and not os.path.exists(config.font_config):
        errors.append(f"--font_config {config.font_config}: not found")
    return errors


def make_demo_data_main(argv=None):
    """anytext2-make-demo-data --output_dir DIR [--num_samples N] [--seed S] [--with_faults]"""
    config = _parse(
        DemoDataConfig,
        "anytext2-make-demo-data",
        "Write synthetic AnyWord-format data (images + data_v1.2b.json).",
        argv,
        renames={"--out": "--output_dir", "--n": "--num_samples"},
        check=lambda c: [] if c.output_dir else ["--output_dir is required"],
    )
    from .synth import make_demo_data

    print(make_demo_data(config.output_dir, config.num_samples, config.seed, config.resolution, config.with_faults))
    return 0


def _export_errors(config: ExportConfig) -> list[str]:
    errors = _data_errors(config)
    if not config.output_dir and not config.push_to_hub:
        errors.append("give --output_dir and/or --push_to_hub")
    if config.push_to_hub and not config.hub_model_id:
        errors.append("--push_to_hub needs --hub_model_id user/name")
    return errors


def export_main(argv=None):
    """anytext2-export-dataset --train_data JSON [JSON ...] --output_dir DIR [--push_to_hub --hub_model_id ID]"""
    argv = list(sys.argv[1:] if argv is None else argv)
    # the old form `--push_to_hub REPO` took the repo id as its value
    for i, arg in enumerate(argv[:-1]):
        if arg == "--push_to_hub" and not argv[i + 1].startswith("-"):
            sys.stderr.write(
                "anytext2-export-dataset: warning: --push_to_hub REPO is deprecated; use --push_to_hub --hub_model_id "
                "REPO\n"
            )
            argv[i + 1 : i + 2] = ["--hub_model_id", argv[i + 1]]
            break
    config = _parse(
        ExportConfig,
        "anytext2-export-dataset",
        "Export AnyWord annotations (+ images) to Parquet shards / a Hub dataset.",
        argv,
        renames={"--public": "--no-hub_private", "--no_embed_images": "--no-embed_images"},
        check=_export_errors,
    )
    from .anyword import export_parquet, load_anyword

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dd = load_anyword(
        config.train_data,
        config.validation_data,
        wm_thresh=config.wm_thresh,
        percent=config.dataset_percent,
        validation_fraction=config.validation_fraction,
        split_seed=config.split_seed,
        cache_dir=config.cache_dir,
    )
    repo = config.hub_model_id if config.push_to_hub else None
    written = export_parquet(
        dd,
        config.output_dir,
        embed_images=config.embed_images,
        max_rows_per_shard=config.max_rows_per_shard,
        push_to_hub=repo,
        private=config.hub_private,
    )
    for split, paths in written.items():
        print(f"{split}: {len(dd[split])} rows in {len(paths)} shard(s) under {config.output_dir}")
    if repo:
        print(f"pushed to https://huggingface.co/datasets/{repo}")
    return 0


def preview_main(argv=None):
    """anytext2-preview-dataset --train_data JSON [JSON ...] --output_dir DIR --num_samples N [--seed S]"""
    config = _parse(
        PreviewConfig,
        "anytext2-preview-dataset",
        "Write one PNG per rendered training sample, then a fault summary.",
        argv,
        renames={"--no_rand_font": "--no-rand_font"},
        check=lambda c: _data_errors(c) + ([] if c.output_dir else ["--output_dir is required"]),
    )
    from .anyword import load_anyword
    from .preview import preview_image
    from .sample import AnyText2TrainDataset, DataConfig, FaultCounter

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = DataConfig(
        resolution=config.resolution,
        mask_ratio=config.mask_ratio,
        font_hint_prob=config.font_hint_prob,
        color_prob=config.color_prob,
        font_config=config.font_config,
        rand_font=config.rand_font,
    )
    rows = load_anyword(
        config.train_data, wm_thresh=config.wm_thresh, percent=config.dataset_percent, cache_dir=config.cache_dir
    )["train"]
    ds = AnyText2TrainDataset(rows, cfg, seed=config.seed)
    ds.set_epoch(config.epoch)
    os.makedirs(config.output_dir, exist_ok=True)
    counter = FaultCounter()
    n = min(config.num_samples, len(ds))
    for i in range(n):
        s = ds[i]
        counter.update([s])
        preview_image(s).save(os.path.join(config.output_dir, f"sample_{i:05d}.png"))
    print(f"wrote {n} previews to {config.output_dir}")
    print(counter.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(preview_main())
