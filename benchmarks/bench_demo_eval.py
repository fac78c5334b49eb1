"""The eval stage's measurement (issue 20, must-show 1) on the shipped demo model, from the package alone.

The 50 held-out words (``data.demo_words.HELDOUT_WORDS``, never drawn in training) are generated at the eval
box (``demo_model.HELDOUT_BOX``) by ``testing.demo_pipeline()`` (float32 on the CPU) with the recipe's eval
settings (DDIM 20 steps, guidance ``demo_model.EVAL_GUIDANCE``, seed 100) and read back with the suite's OCR
evaluation, as ``make_demo_model.py``'s eval stage does on its float32 pipeline folder. ``--grid`` also draws
every image with the word and what the OCR read (green: exact), the image in docs/demo_model.md.
``--tesseract`` also reads the same crops with Tesseract (``evaluation.tesseract``; the ``tesseract-ocr``
system package), a reader the model's OCR losses never trained against: its Latin figures are a second opinion
on whether a gain is in the letters or only in what PP-OCRv3 reads.

    python benchmarks/bench_demo_eval.py --grid docs/images/demo_model_eval_50words.jpg --tesseract

Last line: one JSON object (Sen.ACC / NED, all words and per language; with ``--tesseract``, Tesseract's
under ``"tesseract"``: English only, so its Chinese lines read as nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

COLUMNS, LABEL_HEIGHT = 10, 36


def draw_grid(images_dir: str, scores, path: str) -> None:
    """Each generated image (128 px) over two label lines: the word, and the reading (green when exact)."""
    from PIL import Image, ImageDraw, ImageFont

    from anytext2_diffusers.data.fonts import BUNDLED_FONT_DIR
    from anytext2_diffusers.demo_model import RESOLUTION as size

    rows = -(-len(scores.lines) // COLUMNS)
    grid = Image.new("RGB", (COLUMNS * size, rows * (size + LABEL_HEIGHT)), "white")
    pen = ImageDraw.Draw(grid)
    font = ImageFont.truetype(str(BUNDLED_FONT_DIR / "WenQuanYiMicroHei-Subset.ttf"), 14)
    for i, line in enumerate(scores.lines):
        x, y = (i % COLUMNS) * size, (i // COLUMNS) * (size + LABEL_HEIGHT)
        grid.paste(Image.open(os.path.join(images_dir, line.image)).convert("RGB"), (x, y))
        pen.text((x + 4, y + size + 1), line.gt, fill="black", font=font)
        pen.text((x + 4, y + size + 18), line.pred or "(nothing)", fill="green" if line.sen_acc else "red", font=font)
    grid.save(path, quality=90)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default=None, help="write the images with their readings here (JPEG or PNG)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (the eval stage's 20)")
    p.add_argument("--tesseract", action="store_true", help="also read the images with Tesseract (second reader)")
    args = p.parse_args(argv)
    from anytext2_diffusers import demo_model as dm
    from anytext2_diffusers.data.demo_words import HELDOUT_WORDS
    from anytext2_diffusers.evaluation.ocr_eval import evaluate_ocr
    from anytext2_diffusers.evaluation.tesseract import TesseractReader
    from anytext2_diffusers.testing import demo_pipeline

    second = TesseractReader() if args.tesseract else None  # before the generation: a missing command fails fast
    with tempfile.TemporaryDirectory() as work:
        bench = dm.heldout_benchmark(os.path.join(work, "heldout_words.json"))
        images = os.path.join(work, "images")
        summary = dm.generate_and_score(demo_pipeline(), bench, images, args.steps)
        if args.grid:
            _, scores = evaluate_ocr(images, bench, dm.ocr_reader(), num_samples=1)
            assert len(scores.lines) == len(HELDOUT_WORDS)
            draw_grid(images, scores, args.grid)
        if second:
            summary["tesseract"] = dm.read_back(images, bench, second)
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
