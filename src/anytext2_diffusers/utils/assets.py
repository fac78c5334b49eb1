"""Where the package data lives (no heavy imports: the training CLI reads this before it imports torch)."""

from __future__ import annotations

import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEMO_MODEL_DIR = os.path.join(ASSETS_DIR, "demo_model")


def demo_model_dir() -> str:
    """The package-data folder of the trained demo model (``demo_model.stage_export`` writes it): an
    ``AnyText2Pipeline`` folder in fp16 safetensors without its ``ocr`` component."""
    return DEMO_MODEL_DIR
