"""JSON + Markdown reports: our measured figures per benchmark, and AnyText2's published ones kept apart."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

# AnyText2 paper (arXiv 2411.15245), main results table, AnyText-benchmark. OCR scored with DuGuang's
# ConvNeXt-Tiny recogniser (ModelScope), FID with pytorch-fid, CLIPScore with OpenAI CLIP ViT-B/32.
PUBLISHED_ANYTEXT2 = {
    "English": {"sen_acc": 0.8175, "ned": 0.9193, "fid": 27.87, "clip_score": 0.9882},
    "Chinese": {"sen_acc": 0.7250, "ned": 0.8529, "fid": 24.32, "clip_score": 0.9137},
}
METRIC_KEYS = ("sen_acc", "ned", "fid", "clip_score")
HEADERS = {"sen_acc": "Sen.ACC ↑", "ned": "NED ↑", "fid": "FID ↓", "clip_score": "CLIPScore ↑"}


def benchmark_name(*paths) -> str:
    """Row label from a benchmark/image path: ``laion`` -> English, ``wukong`` -> Chinese, else the file stem."""
    for p in paths:
        if p is None:
            continue
        text = str(p).lower()
        if "laion" in text:
            return "English"
        if "wukong" in text:
            return "Chinese"
    first = next((p for p in paths if p is not None), "benchmark")
    return Path(str(first)).stem


def merge_results(results: Iterable[Mapping]) -> dict:
    """Combine per-metric results (each with ``name`` and ``metric``) into ``{row: {metric values}}``.

    A row is one set of images on one benchmark: results for the same name and image folder (or without
    one) share a row, and a later result for the same metric replaces an earlier one there. Results for
    the same name from another image folder (another model on that benchmark) get their own row, labelled
    ``name (folder)``."""
    rows: list[tuple[str, str | None, dict]] = []  # (name, images, values)
    for res in results:
        name = res.get("name") or benchmark_name(res.get("benchmark"), res.get("images"))
        images = res.get("images")
        for row_name, row_images, values in rows:
            if row_name == name and (images is None or row_images is None or images == row_images):
                row = values
                break
        else:
            row = {}
            rows.append((name, images, row))
        metric = res.get("metric")
        if metric == "ocr":
            row.update(sen_acc=res["sen_acc"], ned=res["ned"], lines=res["lines"])
            row["ocr_recognizer"] = res.get("recognizer")
            row["ocr_per_language"] = res.get("per_language", {})
        elif metric == "clip":
            row.update(clip_score=res["clip_score"], clip_model=res.get("clip_model"))
        elif metric == "fid":
            row.update(fid=res["fid"], fid_feature_extractor=res.get("feature_extractor"))
        else:
            raise ValueError(f"result without a known 'metric' (ocr/clip/fid): {sorted(res)}")
        if images is not None:
            row.setdefault("images", images)
    table: dict[str, dict] = {}
    for name in dict.fromkeys(row_name for row_name, _, _ in rows):
        group = [(images, values) for row_name, images, values in rows if row_name == name]
        if len(group) == 1:
            table[name] = group[0][1]
            continue
        short = [Path(images).name if images else "" for images, _ in group]
        use_short = len(set(short)) == len(short)  # folder names tell the models apart, else full paths
        for (images, values), folder in zip(group, short):
            table[f"{name} ({folder if use_short else images})"] = values
    return table


def _fmt(value, key) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if key == "fid" else f"{value:.4f}"


def _table(rows: Mapping[str, Mapping]) -> list[str]:
    out = ["| Benchmark | " + " | ".join(HEADERS[k] for k in METRIC_KEYS) + " |", "|---|" + "---:|" * len(METRIC_KEYS)]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(_fmt(row.get(k), k) for k in METRIC_KEYS) + " |")
    return out


def markdown_report(table: Mapping[str, Mapping]) -> str:
    lines = ["# AnyText2 evaluation", "", "## Measured (this run)", ""]
    lines += _table(table)
    notes = []
    for name, row in table.items():
        if row.get("ocr_recognizer"):
            notes.append(f"- {name}: OCR by {row['ocr_recognizer']} on {row.get('lines', 0)} lines")
        if row.get("clip_model"):
            notes.append(f"- {name}: CLIPScore with {row['clip_model']}")
        if row.get("fid_feature_extractor"):
            notes.append(f"- {name}: FID features from {row['fid_feature_extractor']}")
    if notes:
        lines += [""] + notes
    for name, row in table.items():
        per = row.get("ocr_per_language") or {}
        if len(per) > 1:
            lines += ["", f"### {name}: OCR per line language", "", "| Language | Sen.ACC ↑ | NED ↑ | lines |"]
            lines.append("|---|---:|---:|---:|")
            for lang, s in per.items():
                lines.append(f"| {lang} | {_fmt(s['sen_acc'], 'sen_acc')} | {_fmt(s['ned'], 'ned')} | {s['lines']} |")
    lines += [
        "",
        "## Published AnyText2 figures (arXiv 2411.15245; not measured here)",
        "",
        *_table(PUBLISHED_ANYTEXT2),
        "",
        "The published OCR figures come from DuGuang's ConvNeXt-Tiny recogniser; Sen.ACC/NED are comparable",
        "only between runs that use the same recogniser (and FID/CLIPScore only with the same feature models).",
        "",
    ]
    return "\n".join(lines)


def write_report(results: Iterable[Mapping], out: str | Path) -> dict:
    """Write ``out`` (.json) and the same path with ``.md``; returns the JSON payload."""
    results = list(results)
    table = merge_results(results)
    payload = {"measured": table, "published_anytext2": PUBLISHED_ANYTEXT2}
    out = Path(out)
    if out.suffix != ".json":
        out = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown_report(table), encoding="utf-8")
    return payload
