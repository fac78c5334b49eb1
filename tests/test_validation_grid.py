"""The validation grid explains itself: column names drawn in the image, empty OCR readings said."""

from __future__ import annotations

import numpy as np

from anytext2_diffusers.training.validation import COLUMNS, header_row, ocr_lines


def test_header_names_every_column_in_its_own_tile():
    size = 128
    header = header_row(COLUMNS, size)
    assert header.shape == (max(16, size // 8), size * len(COLUMNS), 3) and header.dtype == np.uint8
    ink = header.min(axis=2) < 128  # dark text on white
    for i in range(len(COLUMNS)):
        tile = ink[:, i * size : (i + 1) * size]
        assert tile.any(), f"column {COLUMNS[i]!r} has no label"
        assert not tile[:, :1].any() or i == 0, "labels stay inside their column"


def test_ocr_panel_lines():
    assert ocr_lines(["Hi", "Yo"], None) == ["Hi -> ?", "Yo -> ?"]
    assert ocr_lines(["Hi", "Yo"], ["Hi", ""]) == ["Hi -> Hi", "Yo -> (nothing read)"]
    assert ocr_lines(["Hi"], [" "]) == ["Hi -> (nothing read)"]
