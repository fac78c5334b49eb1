"""A second reader for ``anytext2-eval ocr``: Tesseract, an OCR that no model here is trained against.

Why: AnyText2's OCR losses train the model against PP-OCRv3, the recognizer the evaluation reads with by
default. A gain that only PP-OCRv3 sees could be the model learning that recognizer's quirks rather than
drawing letters. Tesseract (its own LSTM models and training data) reads the same crops with no such tie, so
a gain it sees too is a gain in the letters (docs/demo_model.md uses it that way).

    apt-get install tesseract-ocr   # a system package; its English model comes with it
    anytext2-eval ocr --images out --benchmark bench.json \\
        --recognizer anytext2_diffusers.evaluation.tesseract:TesseractReader

It reads each crop as one line of text (``--psm 7``) after scaling it up (Tesseract is tuned for letters
about 30 px high; a 128 px demo image's line is 48 px tall with letters of ~20). Spaces are dropped (a
benchmark line is one word); everything else it reads is kept, so stray marks cost NED as they would with
PP-OCR. English by default: read Chinese lines with ``lang="chi_sim"`` (``tesseract-ocr-chi-sim``).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np
from PIL import Image

INSTALL_HINT = "install it with `apt-get install tesseract-ocr` (a system package, not on PyPI)"


class TesseractReader:
    """``list of HxWx3 uint8 RGB crops -> list of str`` (the evaluation's recognizer interface) through the
    ``tesseract`` command, one process per crop."""

    def __init__(self, lang: str = "eng", scale: int = 4, psm: int = 7, command: str = "tesseract"):
        found = shutil.which(command)
        if found is None:
            raise FileNotFoundError(f"{command!r} is not on PATH: {INSTALL_HINT}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.command, self.lang, self.scale, self.psm = found, lang, int(scale), int(psm)
        # One thread per process: the crops are read one after another, and OpenMP threads only contend.
        self._env = dict(os.environ, OMP_THREAD_LIMIT="1")

    def __call__(self, crops: Sequence[np.ndarray]) -> list[str]:
        return [self.read(crop) for crop in crops]

    def read(self, crop: np.ndarray) -> str:
        image = Image.fromarray(np.ascontiguousarray(crop)).convert("RGB")
        if self.scale > 1:
            image = image.resize((image.width * self.scale, image.height * self.scale), Image.BICUBIC)
        png = io.BytesIO()
        image.save(png, format="PNG")
        args = [self.command, "stdin", "stdout", "--psm", str(self.psm), "-l", self.lang]
        done = subprocess.run(args, input=png.getvalue(), capture_output=True, env=self._env, timeout=60)
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{' '.join(args)} exited with {done.returncode}: {message}")
        return "".join(done.stdout.decode(errors="replace").split())
