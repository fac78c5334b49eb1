"""The end-to-end learning check of the demo model: unreadable -> (the suite's loop) -> readable.

Starts from a trained AnyText2 pipeline folder with WriteNet's output convolutions zeroed (no glyph
information reaches the UNet, so the held-out words are not written), trains ``--steps`` with the demo
recipe's loop options, and reads the 50 held-out words generated before and after with the suite's OCR
evaluation. Needs the recipe's work folder (its data stage) and a trained pipeline (its ocr stage, else its
anneal, focus or anytext2 stage); it trains on the images that stage trained on (without the OCR losses).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_learning.py --work_dir demo-train --steps 500

Last line: one JSON object (``before`` and ``after``: Sen.ACC / NED overall and per language, the loop's
command, steps and wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os

from anytext2_diffusers import demo_model as dm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work_dir", required=True, help="the recipe's work folder (data stage done)")
    p.add_argument(
        "--pipeline",
        default=None,
        help="trained pipeline folder (default: the last finished of <work_dir>/ocr, anneal, focus, anytext2)",
    )
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval_steps", type=int, default=20, help="sampler steps per held-out word")
    args = p.parse_args()
    data = dm.stage_data(args.work_dir)
    finished = [
        os.path.join(args.work_dir, stage)
        for stage in ("ocr", "anneal", "focus", "anytext2")
        if os.path.isfile(os.path.join(args.work_dir, stage, "model_index.json"))
    ]
    pipeline = args.pipeline or (finished[0] if finished else os.path.join(args.work_dir, "anytext2"))
    result = dm.learning_check(args.work_dir, data, pipeline, args.steps, args.eval_steps)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
