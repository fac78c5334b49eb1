"""Model card and Hub upload of the final output folder (never the checkpoints; never the token)."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Not uploaded: training checkpoints (optimizer state, large), interrupted writes, the demo's synthetic data.
# Checkpoints, demo data and the run's own bookkeeping (lock file, a final folder being written or replaced).
IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoint-*/**",
    "*.partial",
    "*.partial/**",
    "demo_data/**",
    ".anytext2_run.lock",
    ".pipeline.*/**",
]
CARD_SETTINGS = (
    "resolution",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "mixed_precision",
    "seed",
    "max_lines",
    "max_chars",
    "mask_ratio",
    "font_hint_prob",
    "color_prob",
    "sd_locked",
    "only_mid_control",
    "unlock_qkv",
    "train_text_embedding",
    "train_font_ocr",
    "attnx_scale",
    "control_scales",
    "loss_alpha",
    "loss_beta",
    "latin_weight",
    "with_step_weight",
    "use_vae_upsample",
    "use_ema",
)


def model_card(config, global_step: int, metrics: dict[str, float], image_paths: list[str]) -> str:
    """README.md for the output folder: base model, data, hyper-parameters, validation images and metrics."""
    base = "tiny random test components" if config.tiny_model else (config.pretrained_model_name_or_path or "?")
    front = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        "tags: [anytext2, diffusers, text-to-image, visual-text-generation, controlnet]",
    ]
    if config.pretrained_model_name_or_path and not config.tiny_model:
        front.append(f"base_model: {config.pretrained_model_name_or_path}")
    front.append("---")
    lines = front + [
        "",
        f"# {os.path.basename(os.path.abspath(config.output_dir))}",
        "",
        "AnyText2 (multilingual visual text generation and editing, arXiv 2411.15245) trained with "
        "anytext2-diffusers' `examples/train_anytext2.py`.",
        "",
        f"* **Base model:** {base}",
        f"* **Training data:** {', '.join(map(str, config.train_data)) or '-'}",
        f"* **Validation data:** {', '.join(map(str, config.validation_data)) or '-'}",
        f"* **Optimizer steps:** {global_step}",
        "",
        "## Use",
        "",
        "```python",
        "from anytext2_diffusers import AnyText2Pipeline",
        "",
        'pipe = AnyText2Pipeline.from_pretrained("PATH_OR_REPO")',
        "```",
        "",
        "## Hyper-parameters",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    values = config.to_dict()
    lines += [f"| `{k}` | `{values[k]}` |" for k in CARD_SETTINGS]
    if metrics:
        lines += ["", "## Validation (last evaluation)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {v:.5f} |" for k, v in sorted(metrics.items())]
    if image_paths:
        lines += [
            "",
            "## Validation images",
            "",
            "Columns: source with lines, reconstruction, masked image, glyphs, positions, generated, OCR.",
            "",
        ]
        lines += [f"![{os.path.basename(p)}]({p})" for p in image_paths]
    return "\n".join(lines) + "\n"


def write_model_card(config, global_step: int, metrics: dict[str, float]) -> str:
    folder = os.path.join(config.output_dir, "validation")
    images = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    card = model_card(config, global_step, metrics, [f"validation/{n}" for n in images[-1:]])
    path = os.path.join(config.output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path


def push_to_hub(config) -> str:
    """Create the repo (if needed) and upload the output folder without checkpoints; returns the repo id."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = config.hub_model_id or os.path.basename(os.path.abspath(config.output_dir))
    repo_id = create_repo(repo_id, exist_ok=True, private=config.hub_private, token=config.hub_token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=config.output_dir,
        commit_message="AnyText2 training output",
        ignore_patterns=IGNORE_PATTERNS,
        token=config.hub_token,
    )
    logger.info("uploaded %s to https://huggingface.co/%s", config.output_dir, repo_id)
    return repo_id
