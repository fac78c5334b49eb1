"""Trainable AnyText2 blocks as diffusers models."""

from .attnx import AnyText2AttnXModel
from .ocr import PPOCRRecognizer, PPOCRRecognizerOutput
from .writenet import AnyText2ControlNetModel, AnyText2ControlNetOutput

__all__ = [
    "AnyText2AttnXModel",
    "AnyText2ControlNetModel",
    "AnyText2ControlNetOutput",
    "PPOCRRecognizer",
    "PPOCRRecognizerOutput",
]
