"""Deprecated module path, kept for folders already saved: a pipeline's ``model_index.json`` names the module
of each custom component, and folders written before the model moved to ``models/controlnet.py`` say
``anytext2_diffusers.models.writenet`` (diffusers imports that path to load ``controlnet``)."""

from .controlnet import AnyText2ControlNetModel, AnyText2ControlNetOutput

__all__ = ["AnyText2ControlNetModel", "AnyText2ControlNetOutput"]
