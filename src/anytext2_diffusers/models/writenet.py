"""Deprecated module path, kept for folders already saved: a pipeline's ``model_index.json`` names the module
of each custom component, and folders written before the model moved to ``models/controlnet.py`` say
``anytext2_diffusers.models.writenet``. diffusers loads such a component only from a module that is already
imported (``models/__init__`` imports this one) and looks its loadable base class (``ModelMixin``) up in it."""

from diffusers.models.modeling_utils import ModelMixin

from .controlnet import AnyText2ControlNetModel, AnyText2ControlNetOutput

__all__ = ["AnyText2ControlNetModel", "AnyText2ControlNetOutput", "ModelMixin"]
