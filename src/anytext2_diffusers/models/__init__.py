"""AnyText2 blocks as diffusers models: WriteNet, AttnX, the text embedding, the OCR recognizer."""

# writenet: imported so that diffusers can load folders saved before the move to controlnet.py (see its docstring)
from . import writenet  # noqa: F401
from .attnx import AnyText2AttnXModel
from .conditioning import AnyText2CaptionEncoder, CaptionEncoding
from .controlnet import AnyText2ControlNetModel, AnyText2ControlNetOutput
from .ocr import PPOCRRecognizer, PPOCRRecognizerOutput
from .text_embedding import AnyText2TextEmbeddingModel, AnyText2TextEmbeddingOutput

__all__ = [
    "AnyText2AttnXModel",
    "AnyText2CaptionEncoder",
    "AnyText2ControlNetModel",
    "AnyText2ControlNetOutput",
    "AnyText2TextEmbeddingModel",
    "AnyText2TextEmbeddingOutput",
    "CaptionEncoding",
    "PPOCRRecognizer",
    "PPOCRRecognizerOutput",
]
