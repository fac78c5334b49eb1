"""AnyWord-3M annotations as a Hugging Face ``datasets`` builder, and its Parquet export.

``datasets`` >= 4 no longer runs loading scripts, so the builder is used from Python
(``load_anyword``); ``export_parquet`` writes shards that ``load_dataset("parquet", ...)`` or a Hub
repo id read back into the same rows. Rows keep the annotations as they are in the JSON (rendering
interprets them), so an export round-trips exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

logger = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "image": datasets.Image(decode=False),  # {"path": absolute path, "bytes": None or embedded bytes}
        "img_name": datasets.Value("string"),
        "caption": datasets.Value("string"),  # None when the record has none
        "wm_score": datasets.Value("float64"),  # None when the record has none
        "annotations": datasets.List(
            {
                "polygon": datasets.List(datasets.List(datasets.Value("float64"))),
                "text": datasets.Value("string"),
                "language": datasets.Value("string"),
                "color": datasets.List(datasets.Value("float64")),  # None when absent
                "valid": datasets.Value("bool"),  # None when absent (= valid)
                "pos": datasets.Value("string"),  # JSON-encoded, as in the file; None when absent
            }
        ),
        "source": datasets.Value("string"),  # the annotation file the record came from
    }
)


class AnnotationFileError(ValueError):
    """An annotation file that cannot be used at all (fail fast, named)."""


def read_annotation_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AnnotationFileError(f"annotation file {path} does not exist")
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
    except Exception as e:
        raise AnnotationFileError(f"annotation file {path} is not readable JSON: {e}") from e
    if not isinstance(content, dict) or not isinstance(content.get("data_list"), list):
        raise AnnotationFileError(f"annotation file {path}: expected an object with a 'data_list' list")
    return content


def _polygon(raw):
    """[[x, y], ...] floats, or [] when the value has no such shape (counted at render time as bad)."""
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 2 or arr.shape[1] != 2:
        return None
    return arr.tolist()


def _annotation(a: dict) -> dict:
    poly = _polygon(a.get("polygon", []))
    color = a.get("color")
    try:
        color = None if color is None else [float(c) for c in color]
    except (TypeError, ValueError):
        color = None
    text = a.get("text")
    return {
        # a malformed polygon becomes a 1-point one so that rendering counts it as bad
        "polygon": poly if poly is not None else [[float("nan"), float("nan")]],
        "text": None if text is None else str(text),
        "language": a.get("language"),
        "color": color,
        "valid": a.get("valid"),
        "pos": json.dumps(a["pos"]) if "pos" in a else None,
    }


def records_from_file(
    path: str, wm_thresh: float = 1.0, percent: float = 1.0, counts: Counter | None = None, data_root: str | None = None
) -> list:
    """Rows of one annotation file after watermark filtering and ``percent`` truncation.

    ``percent`` keeps the first ceil(percent * len(data_list)) records that pass the filter (the
    reference keeps one record more than that, an off-by-one). A relative ``data_root`` is resolved
    against the annotation file's folder.
    """
    counts = counts if counts is not None else Counter()
    content = read_annotation_file(path)
    root = data_root or content.get("data_root") or ""
    if not os.path.isabs(root):
        root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), root))
    limit = math.ceil(len(content["data_list"]) * percent)
    rows = []
    for gt in content["data_list"]:
        if len(rows) >= limit:
            break
        if not isinstance(gt, dict) or not gt.get("img_name"):
            counts["no_img_name"] += 1
            continue
        wm = gt.get("wm_score")
        if wm is not None and wm > wm_thresh:  # an image with a watermark
            counts["wm_skip"] += 1
            continue
        rows.append(
            {
                "image": {"path": os.path.join(root, gt["img_name"]), "bytes": None},
                "img_name": gt["img_name"],
                "caption": gt.get("caption"),
                "wm_score": None if wm is None else float(wm),
                "annotations": [_annotation(a) for a in gt.get("annotations") or [] if isinstance(a, dict)],
                "source": source_label(path),
            }
        )
    counts["records"] += len(rows)
    return rows


@dataclass
class AnyWord3MConfig(datasets.BuilderConfig):
    """train_files / validation_files: AnyWord annotation JSONs (``data_v1.2b.json``)."""

    train_files: tuple = ()
    validation_files: tuple = ()
    wm_thresh: float = 1.0
    percent: float = 1.0
    validation_fraction: float = 0.0  # held out from train_files when no validation_files
    split_seed: int = 0
    data_root: str | None = None  # overrides every file's data_root (e.g. a mounted copy)


class AnyWord3M(datasets.GeneratorBasedBuilder):
    """AnyWord-3M (or any file in its format). Splits: train, and validation when asked for."""

    BUILDER_CONFIG_CLASS = AnyWord3MConfig
    VERSION = datasets.Version("1.0.0")

    def _info(self):
        return datasets.DatasetInfo(
            description="AnyWord-3M text-image records (AnyText2 training data)",
            features=FEATURES,
            homepage="https://github.com/tyxsspa/AnyText2",
        )

    def _load(self):
        cfg = self.config
        if not cfg.train_files:
            raise AnnotationFileError("AnyWord3M needs at least one annotation file (train_files)")
        counts: Counter = Counter()
        train = []
        for p in cfg.train_files:
            train += records_from_file(p, cfg.wm_thresh, cfg.percent, counts, cfg.data_root)
        val = []
        for p in cfg.validation_files:
            val += records_from_file(p, cfg.wm_thresh, 1.0, counts, cfg.data_root)
        if not cfg.validation_files and cfg.validation_fraction > 0:
            order = np.random.default_rng(cfg.split_seed).permutation(len(train))
            n_val = int(round(len(train) * cfg.validation_fraction))
            held = set(order[:n_val].tolist())
            val = [r for i, r in enumerate(train) if i in held]
            train = [r for i, r in enumerate(train) if i not in held]
        logger.info(
            "AnyWord3M: %d train, %d validation records; skipped: wm=%d, no img_name=%d",
            len(train),
            len(val),
            counts["wm_skip"],
            counts["no_img_name"],
        )
        self.load_counts = counts
        return {"train": train, "validation": val}

    def _split_generators(self, dl_manager):
        splits = self._load()
        self._records = splits
        out = [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"split": "train"})]
        if splits["validation"]:
            out.append(datasets.SplitGenerator(name=datasets.Split.VALIDATION, gen_kwargs={"split": "validation"}))
        return out

    def _generate_examples(self, split):
        yield from enumerate(self._records[split])


def load_anyword(
    train_files,
    validation_files=(),
    *,
    wm_thresh: float = 1.0,
    percent: float = 1.0,
    validation_fraction: float = 0.0,
    split_seed: int = 0,
    data_root: str | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
):
    """AnyWord rows as a ``datasets.DatasetDict`` (or ``IterableDatasetDict`` when streaming)."""
    if isinstance(train_files, (str, os.PathLike)):
        train_files = [train_files]
    if isinstance(validation_files, (str, os.PathLike)):
        validation_files = [validation_files]
    files = tuple(str(Path(p).resolve()) for p in train_files)
    vfiles = tuple(str(Path(p).resolve()) for p in validation_files)
    for p in files + vfiles:  # fail before datasets wraps the error
        read_annotation_file(p)
    builder = AnyWord3M(
        cache_dir=cache_dir,
        train_files=files,
        validation_files=vfiles,
        wm_thresh=float(wm_thresh),
        percent=float(percent),
        validation_fraction=float(validation_fraction),
        split_seed=int(split_seed),
        data_root=data_root,
        hash=_files_fingerprint(files + vfiles),
    )
    if streaming:
        return builder.as_streaming_dataset()
    builder.download_and_prepare()
    return builder.as_dataset()


def _files_fingerprint(paths) -> str:
    """Cache key that changes when an annotation file changes (path, size, mtime)."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def source_label(path) -> str:
    """The annotation file as ``folder/file`` (``Art/data_v1.2b.json``): tells AnyWord's subsets apart
    without the local absolute path, which would travel to the Hub with an export."""
    path = os.path.abspath(os.fspath(path))
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"


def embed_image_bytes(row: dict) -> dict:
    """Row with the image file's bytes inside (a missing file keeps bytes=None and is counted later); the
    path becomes the one relative to the data root (``img_name``), not the local absolute one."""
    img = dict(row["image"])
    if not img.get("bytes") and img.get("path") and os.path.isfile(img["path"]):
        with open(img["path"], "rb") as f:
            img["bytes"] = f.read()
    if img.get("path"):
        img["path"] = row.get("img_name") or os.path.basename(img["path"])
    return {**row, "image": img}


def export_parquet(
    dataset_dict,
    output_dir: str | None = None,
    *,
    embed_images: bool = True,
    max_rows_per_shard: int = 10000,
    push_to_hub: str | None = None,
    private: bool = True,
):
    """Write ``{split}-{i:05d}-of-{n:05d}.parquet`` shards (and/or push to a Hub dataset repo).

    Returns the written file paths per split. Both get a dataset card (README.md, ``data/dataset_card.py``):
    ``load_dataset(output_dir)``, ``load_dataset(repo_id)`` or ``load_dataset("parquet", data_files=...)``
    read them back into the same rows.
    """
    from .dataset_card import dataset_card

    rows = {split: len(ds) for split, ds in dataset_dict.items()}
    if push_to_hub:
        from huggingface_hub import create_repo

        # The card goes first: datasets' push_to_hub keeps a card's text and adds its own configs to it.
        create_repo(push_to_hub, repo_type="dataset", private=private, exist_ok=True)
        dataset_card(rows, with_configs=False).push_to_hub(push_to_hub, repo_type="dataset")
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        dataset_card(rows).save(os.path.join(output_dir, "README.md"))
    written = {}
    for split, ds in dataset_dict.items():
        if embed_images:
            ds = ds.map(embed_image_bytes, features=ds.features, desc=f"embedding {split} images")
        if push_to_hub:
            # images are embedded above when asked; datasets' own embedding would fail on a missing file
            ds.push_to_hub(push_to_hub, split=split, private=private, embed_external_files=False)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            n = max(1, math.ceil(len(ds) / max_rows_per_shard))
            paths = []
            for i in range(n):
                p = os.path.join(output_dir, f"{split}-{i:05d}-of-{n:05d}.parquet")
                # an explicit batch size skips datasets' size estimate, which stats every image path
                ds.shard(n, i, contiguous=True).to_parquet(p, batch_size=1000)
                paths.append(p)
            written[split] = paths
    return written


def load_parquet(output_dir: str, streaming: bool = False):
    """Read an ``export_parquet`` folder back (a DatasetDict with the same features)."""
    files = {}
    for name in sorted(os.listdir(output_dir)):
        if name.endswith(".parquet"):
            files.setdefault(name.split("-")[0], []).append(os.path.join(output_dir, name))
    if not files:
        raise AnnotationFileError(f"{output_dir} has no .parquet shards")
    return datasets.load_dataset("parquet", data_files=files, features=FEATURES, streaming=streaming)
