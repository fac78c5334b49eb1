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


# Hub licence ids. SD1.5 (and every model this suite starts from: SD1.5 or an AnyText2 built on it) is
# under the CreativeML OpenRAIL-M licence, which derived weights inherit; the tiny random components are
# this package's own (Apache-2.0).
SD15_LICENSE = "creativeml-openrail-m"
CODE_LICENSE = "apache-2.0"
TAGS = ["anytext2", "diffusers", "text-to-image", "visual-text-generation", "controlnet", "diffusers-training"]


def hub_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` when it names a Hub repo (not a local folder or file), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name_or_path or os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        return None
    if name_or_path.endswith((".safetensors", ".ckpt", ".pt", ".bin")):
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def public_path(path) -> str:
    """A path as the card may show it: relative paths inside the working folder as they are, others by their
    last two parts (the card is uploaded: local absolute paths must not leak)."""
    path = str(path)
    if hub_id(path):
        return path
    parts = os.path.normpath(path).replace(os.sep, "/").split("/")
    if not os.path.isabs(path) and ".." not in parts and not path.startswith("~"):
        return "/".join(parts)
    return "/".join(p for p in parts[-2:] if p not in ("", "..", "~"))


def card_license(config) -> str:
    """``--model_card_license``, else the base model's own card licence (local folder), else SD1.5's."""
    if getattr(config, "model_card_license", None):
        return config.model_card_license
    if config.tiny_model:
        return CODE_LICENSE
    base = config.pretrained_model_name_or_path
    readme = os.path.join(base, "README.md") if base and os.path.isdir(base) else None
    if readme and os.path.isfile(readme):
        from huggingface_hub import ModelCard

        try:
            license_ = ModelCard.load(readme).data.license
        except Exception as err:  # noqa: BLE001 - an unreadable base card falls back to SD1.5's licence
            logger.warning("model card: cannot read the licence of %s (%s); using %s", readme, err, SD15_LICENSE)
            license_ = None
        if license_:
            return license_
    return SD15_LICENSE


def _base_model_text(config) -> str:
    if config.tiny_model:
        return "tiny random test components (`anytext2_diffusers.testing`)"
    base = config.pretrained_model_name_or_path
    if not base:
        return "-"
    if hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    return f"`{public_path(base)}` (a local copy)"


def _repo_name(config) -> str:
    """What the usage snippet loads: the Hub repo when the run pushes, else the output folder."""
    if config.push_to_hub:
        return config.hub_model_id or os.path.basename(os.path.abspath(config.output_dir))
    return public_path(config.output_dir)


# Where a LoRA run's adapters sit in the output folder (training/lora.py), for the model card.
ADAPTER_FILE_TEXT = {
    "unet": "UNet: `pytorch_lora_weights.safetensors` in diffusers' format (`pipe.load_lora_weights`)",
    "controlnet": "WriteNet: `controlnet_lora/` (`pipe.controlnet.load_lora_adapter`)",
    "attnx": "AttnX: `attnx_lora/` (`pipe.attnx.load_lora_adapter`)",
}


def usage_snippet(config) -> str:
    """Python that loads this output (with its LoRA adapters when the run wrote adapter files) and samples."""
    from .lora import lora_components

    adapters = lora_components(config) if not config.merge_lora_at_end else ()
    name = _repo_name(config)
    size = config.resolution
    lines = ["from anytext2_diffusers import AnyText2Pipeline"]
    if adapters:
        lines.append("from anytext2_diffusers.training.lora import load_lora_adapters")
    if config.push_to_hub:
        lines += ["from huggingface_hub import snapshot_download", "import numpy as np", ""]
        lines += [f'folder = snapshot_download("{name}")']
    else:
        lines += ["import numpy as np", "", f'folder = "{name}"  # the training output folder']
    lines.append("pipe = AnyText2Pipeline.from_pretrained(folder)")
    if adapters:
        lines.append(f"load_lora_adapters(pipe, folder)  # the LoRA adapters of: {', '.join(adapters)}")
    lines += [
        f"mask = np.zeros(({size}, {size}), np.uint8)",
        f"mask[{size // 8}:{size // 4}, {size // 8}:{size - size // 8}] = 255  # where the line goes",
        "image = pipe(",
        '    prompt="a shop sign on a brick wall",',
        '    texts=["OPEN"],',
        "    positions=mask,",
        "    num_inference_steps=20,",
        ").images[0]",
        'image.save("anytext2.png")',
    ]
    return "\n".join(lines)


def model_card(config, global_step: int, metrics: dict[str, float], image_paths: list[str]):
    """The output folder's ``huggingface_hub.ModelCard``: Hub metadata (licence of the weights, base model
    when it is a Hub id, pipeline tag) and the base model, data, settings, usage and last validation grid."""
    from huggingface_hub import ModelCard, ModelCardData

    from .lora import lora_components

    adapters = lora_components(config)
    data = ModelCardData(
        license=card_license(config),
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=TAGS + (["lora"] if adapters else []),
        base_model=None if config.tiny_model else hub_id(config.pretrained_model_name_or_path),
    )
    training = "full weights of the trainable parts"
    if adapters:
        how = "merged into the weights" if config.merge_lora_at_end else "saved as adapter files beside the base"
        training = f"LoRA (rank {config.lora_rank}) on {', '.join(adapters)}, {how}" + (
            f" ({'; '.join(ADAPTER_FILE_TEXT[name] for name in adapters)}): load them with `load_lora_adapters` "
            "as below"
            if not config.merge_lora_at_end
            else ""
        )
    lines = [
        f"# {os.path.basename(os.path.abspath(config.output_dir))}",
        "",
        "AnyText2 (multilingual visual text generation and editing, arXiv 2411.15245) trained with "
        "anytext2-diffusers' `examples/train_anytext2.py`.",
        "",
        f"* **Base model:** {_base_model_text(config)}",
        f"* **Training:** {training}",
        f"* **Training data:** {', '.join(public_path(p) for p in config.train_data) or '-'}",
        f"* **Validation data:** {', '.join(public_path(p) for p in config.validation_data) or '-'}",
        f"* **Optimizer steps:** {global_step}",
        f"* **Licence of the weights:** `{data.license}`",
        "",
        "## Use",
        "",
        "```python",
        usage_snippet(config),
        "```",
        "",
        "## Hyper-parameters",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    values = config.to_dict()
    lines += [f"| `{k}` | `{values[k]}` |" for k in CARD_SETTINGS]
    if adapters:
        lines += [f"| `{k}` | `{values[k]}` |" for k in ("lora_rank", "lora_alpha", "lora_target_modules")]
    if metrics:
        lines += ["", "## Validation (last evaluation)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {v:.5f} |" for k, v in sorted(metrics.items())]
    if image_paths:
        lines += [
            "",
            "## Validation images (last validation)",
            "",
            "Columns: source with lines, reconstruction, masked image, glyphs, positions, generated, OCR.",
            "",
        ]
        lines += [f"![{os.path.basename(p)}]({p})" for p in image_paths]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_model_card(config, global_step: int, metrics: dict[str, float]) -> str:
    """Write README.md (the model card) into the output folder; the last validation grid when validation ran."""
    folder = os.path.join(config.output_dir, "validation")
    images = sorted(n for n in os.listdir(folder) if n.endswith(".png")) if os.path.isdir(folder) else []
    card = model_card(config, global_step, metrics, [f"validation/{n}" for n in images[-1:]])
    path = os.path.join(config.output_dir, "README.md")
    card.save(path)
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
