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


def accelerate_trackers() -> list[str]:
    """The values of accelerate's ``LoggerType`` enum, read from its source file: importing accelerate would
    import torch, which the pre-flight check avoids (tests compare this list with the imported enum)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("accelerate")
    path = os.path.join(os.path.dirname(spec.origin), "utils", "dataclasses.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "LoggerType":
            return [
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ]
    from accelerate.utils import LoggerType  # moved in a later accelerate: pay for the import

    return [t.value for t in LoggerType]


def report_to_trackers(report_to: str) -> list[str] | None:
    """``--report_to`` as accelerate's ``log_with``: None for "none", else the named trackers, each checked
    against accelerate's own ``LoggerType`` list (so a newer accelerate's trackers work without a change here)."""
    names = [name.strip() for name in str(report_to).split(",") if name.strip()]
    if names in ([], ["none"]):
        return None
    known = accelerate_trackers()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--report_to {report_to}: unknown tracker {unknown}; accelerate knows {known} (or none)")
    return names


# 8-bit AdamW on CPU processes ran with this bitsandbytes release (its CPU backend); older ones need a GPU.
BNB_CPU_VERSION = (0, 50)


def bnb_error(*, gpu: bool | None = None) -> str | None:
    """Why ``--use_8bit_adam`` cannot run here (bitsandbytes missing, or too old for a CPU-only machine), or None."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return "--use_8bit_adam needs bitsandbytes: pip install 'anytext2-diffusers[bnb]'"
    release = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if release < BNB_CPU_VERSION and not (_gpu_visible() if gpu is None else gpu):
        return (
            f"--use_8bit_adam: no GPU visible, and bitsandbytes {version} predates the release whose 8-bit AdamW "
            f"runs on CPUs ({'.'.join(map(str, BNB_CPU_VERSION))}): upgrade it or run on a GPU"
        )
    return None


def validation_prompt_errors(prompts: list[str], images: list[str]) -> list[str]:
    """``--validation_prompt`` / ``--validation_image``: pairs (or one image for all prompts), quoted texts,
    existing image files."""
    errors = []
    if images and not prompts:
        errors.append("--validation_image needs --validation_prompt")
    if prompts and len(images) not in (1, len(prompts)):
        errors.append(
            f"--validation_image: {len(images)} images for {len(prompts)} prompts; give one per prompt or one for all"
        )
    for prompt in prompts:
        if not re.search(r'"[^"]+"', prompt):
            errors.append(f'--validation_prompt {prompt!r}: no text in double quotes (e.g. a sign that reads "OPEN")')
    errors += [_missing("--validation_image", path, "file") for path in images if not os.path.isfile(path)]
    return errors


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
    try:
        report_to_trackers(config.report_to)
    except ValueError as e:
        errors.append(str(e))
    if config.use_8bit_adam:
        problem = bnb_error()
        if problem:
            errors.append(problem)
    errors += validation_prompt_errors(list(config.validation_prompt), list(config.validation_image))
    if config.lr_num_cycles < 1:
        errors.append(f"--lr_num_cycles {config.lr_num_cycles}: must be >= 1")
    if config.snr_gamma is not None and config.snr_gamma <= 0:
        errors.append(f"--snr_gamma {config.snr_gamma}: must be > 0 (leave it out to switch Min-SNR off)")
    if config.noise_offset < 0:
        errors.append(f"--noise_offset {config.noise_offset}: must be >= 0")
    problem = precision_error(config.mixed_precision)
    if problem:
        errors.append(problem)
    return errors
