"""How legible the shipped demo model's VAE leaves the evaluation's words: the ceiling of its eval stage.

Each held-out Latin word (``data.demo_words.HELDOUT_LATIN``) is drawn into the eval stage's box
(``demo_model.HELDOUT_BOX``, 112 x 48 px at 128 px) in each bundled Latin font, dark on a light plain
background, as WriteNet's glyph input draws it (``render_glyph_in_polygon``), then encoded and decoded by
the VAE of ``testing.demo_pipeline()`` (posterior mode) and read back with the suite's OCR evaluation, beside
the drawn originals. A generated word cannot read better than its reconstruction reads.

    python benchmarks/bench_demo_vae_ceiling.py

Last line: one JSON object (Sen.ACC / NED of the reconstructions and of the originals, lines per set).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from anytext2_diffusers import demo_model as dm
from anytext2_diffusers.data.demo_words import HELDOUT_LATIN
from anytext2_diffusers.data.fonts import BUNDLED_FONT_DIR
from anytext2_diffusers.data.render import render_glyph_in_polygon
from anytext2_diffusers.evaluation.ocr_eval import evaluate_ocr
from anytext2_diffusers.testing import demo_pipeline

FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSerif-Regular.ttf")
BACKGROUND, INK = (200, 190, 160), (150, 20, 30)


def main() -> None:
    vae = demo_pipeline().vae
    size = dm.RESOLUTION
    polygon = np.array(dm.HELDOUT_BOX, np.float64) * size / 512
    entries, kinds = [], {}
    with tempfile.TemporaryDirectory() as out:
        for f, font in enumerate(FONTS):
            for i, word in enumerate(HELDOUT_LATIN):
                glyphs = np.zeros((size, size), bool)
                render_glyph_in_polygon(glyphs, str(BUNDLED_FONT_DIR / font), word, polygon)
                image = np.full((size, size, 3), BACKGROUND, np.uint8)
                image[glyphs] = INK
                x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
                with torch.no_grad():
                    y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
                rebuilt = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                for kind, pixels in (("reconstructed", rebuilt), ("original", image)):
                    name = f"{kind}_{f}_{i}"
                    Image.fromarray(pixels).save(os.path.join(out, f"{name}_0.jpg"), quality=95)
                    kinds[f"{name}_0.jpg"] = kind
                    line = {"polygon": [list(p) for p in dm.HELDOUT_BOX], "text": word, "language": "Latin"}
                    entries.append({"img_name": f"{name}.jpg", "caption": "", "annotations": [{**line, "valid": True}]})
        bench = os.path.join(out, "words.json")
        with open(bench, "w", encoding="utf-8") as fh:
            json.dump({"data_root": "imgs", "data_list": entries}, fh)
        _, scores = evaluate_ocr(out, bench, dm.ocr_reader(), num_samples=1)
    result = {}
    for kind in ("reconstructed", "original"):
        lines = [line for line in scores.lines if kinds[line.image] == kind]
        result[kind] = dict(
            sen_acc=round(float(np.mean([line.sen_acc for line in lines])), 3),
            ned=round(float(np.mean([line.ned for line in lines])), 3),
            lines=len(lines),
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
