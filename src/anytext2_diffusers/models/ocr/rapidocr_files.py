"""The PP-OCRv3 ONNX files that the PyPI package rapidocr-onnxruntime ships (recognizer and text detector).

The package is found, never imported: it is installed without its dependencies (it requires the GUI
opencv-python, which would overwrite the headless cv2), and only its model files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
RAPIDOCR_REC_MODEL = "models/ch_PP-OCRv3_rec_infer.onnx"
RAPIDOCR_DET_MODEL = "models/ch_PP-OCRv3_det_infer.onnx"


def rapidocr_model_path(relative: str) -> Path:
    """``relative`` inside the installed package; FileNotFoundError with the install command otherwise."""
    spec = importlib.util.find_spec(RAPIDOCR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{RAPIDOCR_PACKAGE} is not installed: pip install --no-deps rapidocr-onnxruntime==1.2.3 "
            f"(or pass the path of a {Path(relative).name} file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed {RAPIDOCR_PACKAGE} package")
    return path
