"""Annotate folders of images into one AnyWord JSON, resumably.

Progress lives in ``<output>.partial.json`` (records so far, skipped images, drop counts), replaced
atomically every ``save_every`` images; the finished JSON is written atomically and the partial file
removed. ``resume=True`` continues from the partial file (or, without one, keeps the records of an
existing output and annotates only the images it lacks). Images are processed in sorted order and
in the same fixed batches on a resumed run, so a resumed run writes the same JSON as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .annotator import DROP_REASONS, AnnotateConfig, Annotator
from .captions import CaptionLookup, find_metadata_file, read_captions
from .images import ImageFolderDataset, find_images

logger = logging.getLogger(__name__)


@dataclass
class AnnotateRun:
    """Everything one ``anytext2-annotate`` call needs (the CLI maps its flags onto this)."""

    images: list[str]
    output: str
    captions: str | None = None
    config: AnnotateConfig = field(default_factory=AnnotateConfig)
    num_workers: int = 2
    resume: bool = False
    save_every: int = 64


def write_json_atomic(path: str, obj) -> None:
    """Write to ``path.tmp``, flush to disk, then rename over ``path`` (never a half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _partial_path(output: str) -> str:
    return f"{output}.partial.json"


def _load_state(run: AnnotateRun) -> tuple[dict, dict, Counter]:
    """(records by img_name, skipped img_name -> reason, drop counts) to continue from."""
    partial = _partial_path(run.output)
    if run.resume and os.path.isfile(partial):
        with open(partial, encoding="utf-8") as f:
            state = json.load(f)
        records = {r["img_name"]: r for r in state["data_list"]}
        logger.info("resuming from %s: %d images done", partial, len(records) + len(state["skipped"]))
        return records, dict(state["skipped"]), Counter(state["dropped"])
    if run.resume and os.path.isfile(run.output):
        with open(run.output, encoding="utf-8") as f:
            done = json.load(f)
        records = {r["img_name"]: r for r in done.get("data_list", [])}
        logger.info("resuming from the finished %s: %d images kept", run.output, len(records))
        return records, {}, Counter()
    if os.path.exists(run.output) or os.path.exists(partial):
        raise FileExistsError(f"{run.output} (or its .partial.json) exists: pass --resume to continue it")
    return {}, {}, Counter()


def _data_root(root: str, output: str) -> str:
    """The image root relative to the JSON's folder when that is possible (the pair can move together)."""
    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        rel = os.path.relpath(root, out_dir)
    except ValueError:  # another drive on Windows
        return root
    return rel.replace(os.sep, "/")


def annotate_folders(
    run: AnnotateRun,
    annotator: Annotator | None = None,
    captioner: Callable | None = None,
) -> dict:
    """Annotate every image under ``run.images`` into ``run.output``; returns the summary dict.

    ``captioner``: optional callable (PIL image -> str) for images the caption file does not cover.
    """
    from PIL import Image

    root, entries = find_images(run.images)
    if not entries:
        raise FileNotFoundError(f"--images: no image files ({', '.join(run.images)}) under {root}")
    caption_file = run.captions or find_metadata_file(run.images)
    lookup = None
    if caption_file:
        if not os.path.isfile(caption_file):
            raise FileNotFoundError(f"--captions: {caption_file} not found")
        lookup = CaptionLookup(read_captions(caption_file), caption_file, root)
    missing_captioned = lookup.unmatched([e.name for e in entries]) if lookup else []
    if missing_captioned:
        logger.warning(
            "%s names %d image(s) not found under %s (ignored), e.g. %s",
            caption_file,
            len(missing_captioned),
            root,
            missing_captioned[:5],
        )

    records, skipped, dropped = _load_state(run)
    todo = [i for i, e in enumerate(entries) if e.name not in records and e.name not in skipped]
    if todo and annotator is None:  # loading the models takes seconds: only when there is work
        annotator = Annotator(run.config)
    data_root = _data_root(root, run.output)

    def snapshot(final: bool):
        ordered = [records[e.name] for e in entries if e.name in records]
        if final:
            return {"data_root": data_root, "data_list": ordered}
        return {"data_root": data_root, "data_list": ordered, "skipped": skipped, "dropped": dict(dropped)}

    dataset = torch.utils.data.Subset(ImageFolderDataset(entries), todo)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=run.config.batch_size,
        shuffle=False,
        num_workers=run.num_workers,
        collate_fn=list,
    )
    since_save = 0
    for batch in loader:
        good = [(i, img) for i, img, reason in batch if img is not None]
        for i, _, reason in batch:
            if reason is not None:
                skipped[entries[i].name] = reason
                logger.warning("skipped %s: %s", entries[i].path, reason)
        results = annotator([img for _, img in good]) if good else []
        for (i, img), res in zip(good, results):
            name = entries[i].name
            caption = lookup.get(name) if lookup else None
            if caption is None and captioner is not None:
                caption = str(captioner(Image.fromarray(img)))
            records[name] = {"img_name": name, "caption": caption or "", "annotations": res.annotations}
            dropped.update(res.dropped)
        since_save += len(batch)
        if since_save >= run.save_every:
            write_json_atomic(_partial_path(run.output), snapshot(final=False))
            since_save = 0
    write_json_atomic(run.output, snapshot(final=True))
    if os.path.exists(_partial_path(run.output)):
        os.remove(_partial_path(run.output))

    lines = sum(len(r["annotations"]) for r in records.values())
    by_language = Counter(a["language"] for r in records.values() for a in r["annotations"])
    return {
        "images": len(records),
        "lines": lines,
        "skipped_images": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(skipped.values()).items())),
        "images_without_text": sum(1 for r in records.values() if not r["annotations"]),
        "lines_dropped": {k: int(dropped.get(k, 0)) for k in DROP_REASONS},
        "lines_by_language": dict(sorted(by_language.items())),
        "captions_naming_missing_images": len(missing_captioned),
        "output": run.output,
    }
