"""Everything about a training configuration that can be checked before anything is imported, loaded or
written: paths exist, options combine. A mistake costs the user one line within a second, instead of a
traceback after the models have loaded (and folders were created).

Hub ids (``user/name``) are not looked up here (that needs the network); local-looking paths must exist.
"""

from __future__ import annotations

import glob
import os
import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(path: str) -> bool:
    """A path the user meant on disk: absolute, relative with ./ or ../ or ~, or a file name with an extension."""
    return (
        os.path.isabs(path)
        or path.startswith(("./", "../", "~", ".\\"))
        or bool(os.path.splitext(path)[1])
        or not _HUB_ID.match(path)
    )


def _gpu_visible() -> bool:
    """An NVIDIA GPU this process may use, without importing torch (which takes seconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def precision_error(mixed_precision: str | None, *, gpu: bool | None = None) -> str | None:
    """Why the requested precision (the option, else accelerate's launch config) cannot run here, or None.
    fp16 on CPU processes runs (training.precision gives it the GPU's autocast + GradScaler path), except
    under DeepSpeed or FSDP, whose fp16 loss scaling needs a GPU."""
    precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    if precision not in ("no", "fp16", "bf16"):
        return f"--mixed_precision {precision}: choose no, fp16 or bf16"
    engine = (
        "DeepSpeed"
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        else "FSDP"
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        else None
    )
    if precision == "fp16" and engine and not (_gpu_visible() if gpu is None else gpu):
        return (
            f"--mixed_precision fp16 with {engine} needs a GPU (its fp16 loss scaling does not run on CPUs): "
            "use bf16 or no"
        )
    return None


def _missing(option: str, path: str, what: str) -> str:
    return f"{option} {path}: {what} not found"


def _data_errors(option: str, sources: list[str]) -> list[str]:
    errors = []
    for source in sources:
        if glob.has_magic(source):
            errors.append(f"{option} {source}: no file matches this pattern (quote-free shell globs expand first)")
        elif os.path.exists(source):
            if os.path.isfile(source) and not source.endswith((".json", ".jsonl")):
                errors.append(f"{option} {source}: expected an AnyWord .json file, a Parquet folder or a Hub id")
        elif _looks_local(source):
            errors.append(_missing(option, source, "file or folder"))
    return errors


def config_errors(config) -> list[str]:
    """Every problem of ``config`` that is known before loading anything (empty list: go ahead)."""
    errors = []
    if not config.train_data and not config.demo:
        errors.append("--train_data is required (AnyWord JSON files, a Parquet folder or a Hub dataset id), or --demo")
    errors += _data_errors("--train_data", list(config.train_data))
    errors += _data_errors("--validation_data", list(config.validation_data))
    for option, path, kind in (
        ("--data_root", config.data_root, "folder"),
        ("--font_config", config.font_config, "file"),
        ("--ocr_model_name_or_path", config.ocr_model_name_or_path, "folder"),
        ("--pretrained_model_name_or_path", config.pretrained_model_name_or_path, "model"),
    ):
        if path and not os.path.exists(path) and (option in ("--data_root", "--font_config") or _looks_local(path)):
            errors.append(_missing(option, path, kind))
    if not (config.tiny_model or config.pretrained_model_name_or_path):
        errors.append("--pretrained_model_name_or_path is required (or --tiny_model / --demo)")
    if os.path.isfile(config.output_dir):
        errors.append(f"--output_dir {config.output_dir}: is a file")
    resume = config.resume_from_checkpoint
    if resume and resume != "latest":
        if not (os.path.isdir(resume) or os.path.isdir(os.path.join(config.output_dir, resume))):
            errors.append(
                f"--resume_from_checkpoint {resume}: no such folder (nor {os.path.join(config.output_dir, resume)}); "
                "use a checkpoint-N folder or 'latest'"
            )
    if config.validation_fraction and not 0 < config.validation_fraction < 1:
        errors.append(f"--validation_fraction {config.validation_fraction}: must lie between 0 and 1")
    if config.push_to_hub and config.hub_model_id and not _HUB_ID.match(config.hub_model_id):
        errors.append(f"--hub_model_id {config.hub_model_id}: expected user/name")
    problem = precision_error(config.mixed_precision)
    if problem:
        errors.append(problem)
    return errors
