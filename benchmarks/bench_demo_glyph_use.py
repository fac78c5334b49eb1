"""How much the demo model's AnyText2 stage uses the glyphs yet: the training error in the text lines with
WriteNet's residuals and with them scaled to 0 (``demo_model.glyph_dependence``), for a loop checkpoint.

Before the held-out words become readable, this says whether the glyph conditioning already shapes the
prediction where the lines are (the in-line error drops with WriteNet on) or not yet (on ~ off).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_glyph_use.py --work_dir demo-train   # latest checkpoint
    python benchmarks/bench_demo_glyph_use.py --work_dir demo-train --checkpoint demo-train/anytext2/checkpoint-2000

Uses the recipe's loop options and its validation data (the held-out-word images; ``--images`` another
AnyWord JSON, e.g. clean-style images). Last line: one JSON
object, per timestep the mean error inside the lines (``text_on`` / ``text_off``) and outside
(``rest_on`` / ``rest_off``).
"""

from __future__ import annotations

import argparse
import json
import os

from anytext2_diffusers import demo_model as dm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work_dir", required=True, help="the recipe's work folder (init stage done)")
    p.add_argument("--stage", default="anytext2", choices=("anytext2", "focus"), help="loop stage to read")
    p.add_argument("--checkpoint", default=None, help="loop checkpoint folder (default: the stage's latest)")
    p.add_argument("--batches", type=int, default=4, help="validation batches of 8")
    p.add_argument("--timesteps", default="200,500,800")
    p.add_argument(
        "--images",
        default=None,
        help="AnyWord JSON of the images to measure on (default: the recipe's held-out-word images)",
    )
    args = p.parse_args()
    timesteps = tuple(int(t) for t in args.timesteps.split(","))
    with dm.checkpoint_probe(args.work_dir, args.checkpoint, args.stage, args.images) as (ckpt, parts, config):
        result = dm.glyph_dependence(parts, config, args.batches, timesteps)
    print(json.dumps(dict(checkpoint=os.path.abspath(ckpt), errors=result)))


if __name__ == "__main__":
    main()
