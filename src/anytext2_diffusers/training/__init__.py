"""AnyText2 training on Accelerate: config, trainable selection, losses, the loop, validation, Hub upload.

``examples/train_anytext2.py`` is ``sys.exit(main())``; see docs/training.md.
"""

from __future__ import annotations

import logging
import os
import time

from .config import DEMO_PRESET, TrainingConfig, parse_args
from .loop import TrainingCallback, TrainingDiverged, TrainResult, train

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

logger = logging.getLogger(__name__)


def _load_hint(out: str, config=None) -> str:
    """A one-line Python command that loads the output as trained: with its LoRA adapters when it has them."""
    from .lora import lora_components

    code = f"from anytext2_diffusers import AnyText2Pipeline; pipe = AnyText2Pipeline.from_pretrained('{out}')"
    if config is not None and lora_components(config) and not config.merge_lora_at_end:
        code += f"; from anytext2_diffusers.training.lora import load_lora_adapters; load_lora_adapters(pipe, '{out}')"
    return f'  python -c "{code}"'


def _next_steps(result: TrainResult, seconds: float, config=None) -> str:
    out = os.path.abspath(result.output_dir)
    return "\n".join(
        [
            f"Done in {seconds:.0f}s: {result.global_step} steps, last logs "
            + ", ".join(f"{k}={v:.4f}" for k, v in result.last_logs.items() if k.startswith("t/")),
            "Open next:",
            f"  tensorboard --logdir {os.path.join(out, 'logs')}      # t/* and v/* curves, v/images",
            f"  {os.path.join(out, 'validation')}/                      # validation grids (PNG)",
            f"  {os.path.join(out, 'README.md')}                        # model card",
            _load_hint(out, config),
        ]
    )


def main(argv=None) -> int:
    config = parse_args(argv)
    start = time.time()
    try:
        result = train(config)
    except TrainingDiverged as err:
        logger.error("%s", err)
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
