"""AnyText2 training on Accelerate: config, trainable selection, losses, the loop, validation, Hub upload.

``examples/train_anytext2.py`` is ``sys.exit(main())``; see docs/training.md. The loop's modules (torch,
diffusers, accelerate) are imported on first use, so ``--help`` and configuration errors answer at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from .config import DEMO_PRESET, TrainingConfig, parse_args

__all__ = [
    "DEMO_PRESET",
    "TrainResult",
    "TrainingCallback",
    "TrainingConfig",
    "TrainingDiverged",
    "main",
    "parse_args",
    "train",
]

_LAZY = {"TrainResult": "loop", "TrainingCallback": "loop", "TrainingDiverged": "loop", "train": "loop"}

logger = logging.getLogger(__name__)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_hint(out: str, config=None) -> str:
    """A one-line Python command that loads the output as trained: with its LoRA adapters when it has them."""
    from .lora import lora_components

    code = f"from anytext2_diffusers import AnyText2Pipeline; pipe = AnyText2Pipeline.from_pretrained('{out}')"
    if config is not None and lora_components(config) and not config.merge_lora_at_end:
        code += f"; from anytext2_diffusers.training.lora import load_lora_adapters; load_lora_adapters(pipe, '{out}')"
    return f'  python -c "{code}"'


def _next_steps(result, seconds: float, config=None) -> str:
    out = os.path.abspath(result.output_dir)
    lines = [
        f"Done in {seconds:.0f}s: {result.global_step} steps, last logs "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.last_logs.items() if k.startswith("t/")),
        "Open next:",
        f"  tensorboard --logdir {os.path.join(out, 'logs')}      # t/* and v/* curves, v/images",
    ]
    if os.path.isdir(os.path.join(out, "validation")):
        lines.append(f"  {os.path.join(out, 'validation')}/                      # validation grids (PNG)")
    lines += [
        f"  {os.path.join(out, 'README.md')}                        # model card",
        _load_hint(out, config),
    ]
    return "\n".join(lines)


def _fail(message: str) -> int:
    sys.stderr.write(f"anytext2-train: error: {message}\n")
    return 2


def main(argv=None) -> int:
    from .preflight import config_errors

    try:
        config = parse_args(argv)
    except (ValueError, FileNotFoundError) as err:
        return _fail(str(err))
    errors = config_errors(config)
    if errors:
        return _fail("; ".join(errors))
    from .checkpointing import CheckpointDamaged
    from .loop import TrainingDiverged, train
    from .output import FinalSaveError
    from .resume_check import ResumeRefused
    from .run_lock import OutputDirLocked
    from .threads import choose_cpu_threads

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    choose_cpu_threads()
    start = time.time()
    try:
        result = train(config)
    except (TrainingDiverged, FinalSaveError, OutputDirLocked, ResumeRefused, CheckpointDamaged) as err:
        logger.error("%s", err)  # one message, no traceback: each names what to do
        return 1
    if not result.is_main_process:
        return 0
    if result.interrupted:
        print(
            f"Interrupted at step {result.global_step}; checkpoint: {result.checkpoint}. "
            f"Resume with --resume_from_checkpoint latest --output_dir {config.output_dir}"
        )
        return 0
    print(_next_steps(result, time.time() - start, config))
    return 0
