"""``examples/convert_checkpoint.py`` / ``anytext2-convert``: options, checks before any model is loaded, dispatch.

    # released AnyText2 weights -> pipeline folder
    anytext2-convert --from_original anytext_v2.0.ckpt --clip_model_name_or_path ./stable-diffusion-v1-5 \\
        --output_dir ./anytext2
    # SD1.5 -> fresh AnyText2 to train from scratch (OCR weights: folder, ppv3_rec.pth, or the ONNX default)
    anytext2-convert --from_sd15 ./stable-diffusion-v1-5 --output_dir ./anytext2-scratch
    # trained pipeline folder -> original checkpoint for the reference code / ComfyUI / ModelScope
    anytext2-convert --to_original ./anytext2.safetensors --pipeline_dir ./my-run
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..utils.cli import ArgumentParser, add_dataclass_arguments, from_namespace, option

SHIPPED_CONFIGS = ("sd15", "tiny")


@dataclass
class ConvertConfig:
    # --- direction (exactly one) ---------------------------------------------------------------
    from_original: str | None = option(None, "Original AnyText2 .ckpt/.pth/.safetensors to convert.", type=str)
    from_sd15: str | None = option(None, "SD1.5 diffusers folder or single-file checkpoint to start from.", type=str)
    to_original: str | None = option(None, "Original checkpoint to write (.safetensors).", type=str)
    # --- paths ----------------------------------------------------------------------------------
    output_dir: str | None = option(None, "Pipeline folder to write (--from_original / --from_sd15).", type=str)
    pipeline_dir: str | None = option(None, "Pipeline folder to read (--to_original).", type=str)
    original_config: str | None = option(
        None,
        "Reference model yaml; a file, or 'tiny' for the tiny test stack; default: the shipped SD1.5 one.",
        type=str,
    )
    clip_model_name_or_path: str | None = option(
        None, "Local CLIP or SD1.5 folder with the tokenizer (needed by --from_original).", type=str
    )
    ocr_model: str | None = option(
        None, "OCR weights for --from_sd15: a folder or ppv3_rec.pth; default: the rapidocr ONNX model.", type=str
    )
    dtype: str = option("fp32", "Weight dtype written.", choices=["fp32", "fp16", "bf16"])


def config_errors(c: ConvertConfig) -> list[str]:
    """Every problem known before loading anything."""
    modes = [m for m in ("from_original", "from_sd15", "to_original") if getattr(c, m)]
    if len(modes) != 1:
        return ["give exactly one of --from_original, --from_sd15, --to_original"]
    errors = []
    if c.from_original:
        if not os.path.isfile(c.from_original):
            errors.append(f"--from_original {c.from_original}: file not found")
        if not c.clip_model_name_or_path:
            errors.append("--from_original needs --clip_model_name_or_path (a local CLIP or SD1.5 folder)")
    if c.from_sd15 and not os.path.exists(c.from_sd15):
        errors.append(f"--from_sd15 {c.from_sd15}: not found")
    if (c.from_original or c.from_sd15) and not c.output_dir:
        errors.append("--output_dir is required")
    if c.to_original:
        if not c.to_original.endswith(".safetensors"):
            errors.append(f"--to_original {c.to_original}: must be a .safetensors file")
        if not c.pipeline_dir:
            errors.append("--pipeline_dir is required with --to_original")
        elif not os.path.isfile(os.path.join(c.pipeline_dir, "model_index.json")):
            errors.append(f"--pipeline_dir {c.pipeline_dir}: no model_index.json (not a pipeline folder)")
    for name in ("clip_model_name_or_path", "ocr_model"):
        path = getattr(c, name)
        if path and not os.path.exists(path):
            errors.append(f"--{name} {path}: not found")
    if c.original_config and c.original_config not in SHIPPED_CONFIGS and not os.path.isfile(c.original_config):
        errors.append(f"--original_config {c.original_config}: file not found (or 'tiny')")
    if c.output_dir and os.path.isfile(c.output_dir):
        errors.append(f"--output_dir {c.output_dir}: is a file")
    return errors


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="anytext2-convert",
        description="Convert AnyText2 checkpoints between the original (ldm/ControlLDM) and the diffusers layout.",
        usage="%(prog)s (--from_original CKPT | --from_sd15 PATH | --to_original OUT.safetensors) [--OPTION VALUE ...]",
    )
    add_dataclass_arguments(parser, ConvertConfig)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    config = from_namespace(ConvertConfig, parser.parse_args(argv))
    errors = config_errors(config)
    if errors:
        parser.error("; ".join(errors))
    from .pipeline_io import convert_original_to_pipeline, convert_pipeline_to_original, convert_sd15_to_pipeline

    if config.from_original:
        report = convert_original_to_pipeline(
            config.from_original,
            config.output_dir,
            config.original_config,
            config.clip_model_name_or_path,
            config.dtype,
        )
        print(report.format())
        print(f"wrote {config.output_dir}")
    elif config.from_sd15:
        convert_sd15_to_pipeline(
            config.from_sd15,
            config.output_dir,
            config.ocr_model,
            config.original_config,
            config.clip_model_name_or_path,
            config.dtype,
        )
        print(f"wrote {config.output_dir}")
    else:
        n = convert_pipeline_to_original(config.pipeline_dir, config.to_original, config.original_config, config.dtype)
        print(f"wrote {n} tensors to {config.to_original}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
