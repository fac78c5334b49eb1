"""Inference pipelines."""

from .pipeline_anytext2 import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    AnyText2Pipeline,
    AnyText2PipelineOutput,
    inference_scheduler,
)

__all__ = [
    "DEFAULT_ADDED_PROMPT",
    "DEFAULT_NEGATIVE_PROMPT",
    "AnyText2Pipeline",
    "AnyText2PipelineOutput",
    "inference_scheduler",
]
