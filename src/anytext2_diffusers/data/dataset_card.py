"""The dataset card (README.md) of a Parquet export: Hub metadata whose ``configs:`` let
``load_dataset(folder_or_repo_id)`` find the shards and splits, and a short description of the rows."""

from __future__ import annotations

from huggingface_hub import DatasetCard, DatasetCardData

TAGS = ["anytext2", "anyword-3m", "visual-text-generation", "ocr"]


def dataset_card(rows: dict[str, int], *, with_configs: bool = True, name: str = "AnyWord export") -> DatasetCard:
    """Card for an export with ``rows[split]`` rows. ``with_configs`` maps each split to the export's own
    ``{split}-*.parquet`` shards (a local folder or a folder upload); ``datasets``' ``push_to_hub`` writes
    its own ``configs`` for the layout it uploads, so a card pushed ahead of it leaves them out."""
    configs = None
    if with_configs:
        files = [{"split": split, "path": f"{split}-*.parquet"} for split in rows]
        configs = [{"config_name": "default", "data_files": files}]
    data = DatasetCardData(pretty_name=name, task_categories=["text-to-image"], tags=TAGS, configs=configs)
    table = ["| split | rows |", "| --- | --- |"] + [f"| {split} | {n} |" for split, n in rows.items()]
    text = [
        f"# {name}",
        "",
        "AnyWord-format text-image annotations (the AnyText2 / AnyWord-3M layout) exported by anytext2-diffusers' "
        "`anytext2-export-dataset`: one row per image with its caption, watermark score and text lines "
        "(polygon, text, language, colour, validity and position as in the source JSON), the image (embedded "
        "bytes, or a path when exported without images) and the annotation file it came from.",
        "",
        *table,
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'rows = load_dataset("REPO_ID_OR_FOLDER")  # a DatasetDict with the splits above',
        "```",
        "",
        "Train on it with `anytext2-train --train_data REPO_ID_OR_FOLDER ...`. The images keep the licences "
        "of their sources.",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(text) + "\n")
