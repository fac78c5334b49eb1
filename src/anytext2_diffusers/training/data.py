"""Training/validation datasets and loaders from ``--train_data`` / ``--validation_data``.

Accepted sources: AnyWord annotation JSON files (read through the ``AnyWord3M`` builder), a folder of
Parquet shards written by ``export_parquet``, or a Hub dataset id with the same columns. Loaders use
``EpochSampler``: the order of epoch e is a pure function of (seed, e), so a resumed run skips exactly
the batches it has already seen.
"""

from __future__ import annotations

import logging
import math
import os

import datasets
import torch

from ..data import AnyText2TrainDataset, Collator, DataConfig, EpochSampler, load_anyword, load_parquet

logger = logging.getLogger(__name__)


def data_config(config) -> DataConfig:
    return DataConfig(
        resolution=config.resolution,
        max_lines=config.max_lines,
        max_chars=config.max_chars,
        mask_ratio=config.mask_ratio,
        glyph_scale=config.glyph_scale,
        rand_font=config.rand_font,
        font_config=config.font_config,
        font_hint_prob=config.font_hint_prob,
        font_hint_area=tuple(config.font_hint_area),
        font_hint_randaug=config.font_hint_randaug,
        color_prob=config.color_prob,
        wm_thresh=config.wm_thresh,
        percent=config.dataset_percent,
    )


def _is_parquet_folder(path: str) -> bool:
    return os.path.isdir(path) and any(n.endswith(".parquet") for n in os.listdir(path))


def _filter_rows(ds, config, percent: float):
    """wm_thresh / dataset_percent for sources that did not go through the JSON builder."""
    if "wm_score" in ds.column_names and config.wm_thresh < 1.0:
        ds = ds.filter(lambda r: r["wm_score"] is None or r["wm_score"] <= config.wm_thresh)
    if percent < 1.0:
        ds = ds.select(range(math.ceil(len(ds) * percent)))
    return ds


def load_rows(sources: list[str], config, validation_sources: list[str] = ()) -> dict:
    """{'train': rows, 'validation': rows or None} from one kind of source."""
    sources = list(sources)
    if not sources:
        raise ValueError("--train_data is required (AnyWord JSON files, a Parquet folder or a Hub dataset id)")
    if all(s.endswith(".json") for s in sources):
        vjson = [v for v in validation_sources if v.endswith(".json")]
        dd = load_anyword(
            sources,
            vjson,
            wm_thresh=config.wm_thresh,
            percent=config.dataset_percent,
            validation_fraction=0.0 if vjson else config.validation_fraction,
            split_seed=config.seed,
            data_root=config.data_root,
            cache_dir=config.cache_dir,
        )
    elif len(sources) == 1 and _is_parquet_folder(sources[0]):
        dd = load_parquet(sources[0])
    elif len(sources) == 1 and not os.path.exists(sources[0]):
        dd = datasets.load_dataset(sources[0], cache_dir=config.cache_dir)
    else:
        raise ValueError(
            f"--train_data {sources}: expected AnyWord .json files, one Parquet export folder or one Hub dataset id"
        )
    train = dd["train"]
    if not all(s.endswith(".json") for s in sources):
        train = _filter_rows(train, config, config.dataset_percent)
    validation = dd["validation"] if "validation" in dd and len(dd["validation"]) else None
    return {"train": train, "validation": validation}


def build_datasets(config) -> tuple[AnyText2TrainDataset, AnyText2TrainDataset | None]:
    rows = load_rows(config.train_data, config, config.validation_data)
    val_rows = rows["validation"]
    if config.validation_data and not all(v.endswith(".json") for v in config.validation_data):
        vrows = load_rows(config.validation_data, config)
        val_rows = vrows["validation"] if vrows["validation"] is not None else vrows["train"]
    if len(rows["train"]) == 0:
        raise ValueError(
            f"--train_data {config.train_data}: no training records left (check the files, --wm_thresh and "
            "--dataset_percent)"
        )
    dcfg = data_config(config)
    train = AnyText2TrainDataset(rows["train"], dcfg, seed=config.seed)
    # Validation samples are rendered with another seed stream but the same settings.
    val = AnyText2TrainDataset(val_rows, dcfg, seed=config.seed + 1) if val_rows is not None else None
    logger.info("data: %d train records, %s validation records", len(train), len(val) if val is not None else "no")
    return train, val


def make_loader(dataset, config, shuffle: bool) -> torch.utils.data.DataLoader:
    """A loader over an ``EpochSampler`` (``loader.set_epoch`` reaches it through accelerate). ``drop_last``
    is off: the reference's Lightning loop keeps the last batch."""
    workers = config.dataloader_num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        sampler=EpochSampler(len(dataset), seed=config.seed, shuffle=shuffle),
        collate_fn=Collator(config.max_lines),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),  # Batch.pin_memory: page-locked batches, non_blocking copies
        # The loader draws a base seed per iterator; an explicit generator keeps the global RNG out of it.
        generator=torch.Generator().manual_seed(config.seed),
    )
