"""anytext2-diffusers: AnyText2 training, conversion, inference and evaluation on the Hugging Face stack."""

from .models import (
    AnyText2AttnXModel,
    AnyText2CaptionEncoder,
    AnyText2ControlNetModel,
    AnyText2ControlNetOutput,
    AnyText2TextEmbeddingModel,
    AnyText2TextEmbeddingOutput,
    CaptionEncoding,
)
from .pipelines import AnyText2Pipeline, AnyText2PipelineOutput

__version__ = "0.1.0"

__all__ = [
    "AnyText2AttnXModel",
    "AnyText2CaptionEncoder",
    "AnyText2ControlNetModel",
    "AnyText2ControlNetOutput",
    "AnyText2Pipeline",
    "AnyText2PipelineOutput",
    "AnyText2TextEmbeddingModel",
    "AnyText2TextEmbeddingOutput",
    "CaptionEncoding",
    "__version__",
]
