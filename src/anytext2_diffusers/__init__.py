"""anytext2-diffusers: AnyText2 training, conversion, inference and evaluation on the Hugging Face stack.

Top-level names are imported lazily so that light entry points (data tools, DataLoader workers) do not
pay for importing diffusers.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AnyText2AttnXModel": "models",
    "AnyText2ControlNetModel": "models",
    "AnyText2ControlNetOutput": "models",
    "PPOCRRecognizer": "models",
    "PPOCRRecognizerOutput": "models",
    "AnyText2TextEmbeddingModel": "models",
    "AnyText2CaptionEncoder": "models",
    "AnyText2Pipeline": "pipelines",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
