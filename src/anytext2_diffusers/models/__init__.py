"""Trainable AnyText2 blocks as diffusers models."""

from .attnx import AnyText2AttnXModel
from .writenet import AnyText2ControlNetModel, AnyText2ControlNetOutput

__all__ = ["AnyText2AttnXModel", "AnyText2ControlNetModel", "AnyText2ControlNetOutput"]
