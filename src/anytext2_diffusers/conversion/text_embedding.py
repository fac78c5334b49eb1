"""Original AnyText2 checkpoint -> :class:`AnyText2TextEmbeddingModel` (``embedding_manager.*``).

Submodule names were kept, so the state dict is a prefix strip; the config comes from the keys' shapes
(token width, recognizer classes) and, when given, the reference yaml's ``embedding_manager_config``.
"""

from __future__ import annotations

from typing import Any

import torch

from .original import EMBEDDING_PREFIX, strip_prefix

FONT_PREFIX = "font_predictor."
# Reference options this port implements only in their reference-config setting.
_UNSUPPORTED = {
    "emb_type": "ocr",
    "big_linear": False,
    "add_style_conv": False,
    "color_big_linear": False,
    "color_fourier_encode": False,
}


def text_embedding_state_dict_from_original(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``embedding_manager.*`` keys of a ControlLDM state dict, prefix stripped."""
    state = strip_prefix(checkpoint, EMBEDDING_PREFIX)
    if not state:
        raise KeyError(
            f"no '{EMBEDDING_PREFIX}*' keys in the checkpoint: not an AnyText2 checkpoint with a text embedding"
        )
    return state


def text_embedding_config_from_original(
    state_dict: dict[str, torch.Tensor], original_config: dict | None = None
) -> dict[str, Any]:
    """Constructor kwargs for the model holding ``state_dict`` (already prefix-stripped).

    ``original_config``: the parsed reference yaml; its ``embedding_manager_config.params`` flags are used
    (and checked against the keys). Without it the branches are inferred from which keys exist.
    """
    if "proj.0.weight" not in state_dict:
        raise KeyError("proj.0.weight missing: only emb_type 'ocr' text embeddings (Linear + LayerNorm) are supported")
    token_dim, features = state_dict["proj.0.weight"].shape
    config: dict[str, Any] = dict(
        token_dim=int(token_dim),
        add_pos="position_encoder.conv1.weight" in state_dict,
        add_style_ocr="style_proj.0.weight" in state_dict,
        style_ocr_trainable=any(k.startswith(FONT_PREFIX) for k in state_dict),
        add_color="color_proj.0.weight" in state_dict,
    )
    if config["add_pos"]:
        config["position_channels"] = int(state_dict["position_encoder.conv1.weight"].shape[1])
    if config["style_ocr_trainable"]:
        head = state_dict.get(f"{FONT_PREFIX}head.fc.weight")
        if head is None:
            raise KeyError(f"{FONT_PREFIX}head.fc.weight missing: incomplete font recognizer")
        config["font_recognizer_config"] = dict(num_classes=int(head.shape[0]), neck_dims=int(head.shape[1]))
        config["neck_dim"] = int(head.shape[1])
    else:
        config["neck_dim"] = 64
    if features % config["neck_dim"]:
        raise ValueError(f"proj.0 takes {features} features, not a multiple of the neck width {config['neck_dim']}")
    config["neck_length"] = int(features) // config["neck_dim"]
    if original_config is not None:
        params = dict(original_config["model"]["params"]["embedding_manager_config"]["params"])
        for name, supported in _UNSUPPORTED.items():
            if name in params and params[name] != supported:
                raise NotImplementedError(f"embedding_manager_config {name}={params[name]!r} is not supported")
        for name in ("add_pos", "add_style_ocr", "add_color"):
            if bool(params.get(name, False)) != config[name]:
                raise ValueError(f"yaml says {name}={params.get(name)} but the checkpoint keys say {config[name]}")
        if config["add_style_ocr"] and bool(params.get("style_ocr_trainable", True)) != config["style_ocr_trainable"]:
            raise ValueError("yaml style_ocr_trainable disagrees with the presence of font_predictor.* keys")
        config["enable_flag"] = bool(params.get("enable_flag", True))
    return config


def text_embedding_model_from_original(
    checkpoint: dict[str, torch.Tensor], original_config: dict | None = None, **overrides
):
    """A float32 :class:`AnyText2TextEmbeddingModel` strictly loaded from an original checkpoint (eval mode).

    Floats are upcast to float32 (parity packs store float16). ``overrides`` set config values that are
    not in the checkpoint, e.g. ``font_ocr_train_mode=False``.
    """
    from ..models.text_embedding import AnyText2TextEmbeddingModel

    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in text_embedding_state_dict_from_original(checkpoint).items()
    }
    config = text_embedding_config_from_original(state, original_config)
    config.update(overrides)
    model = AnyText2TextEmbeddingModel(**config)
    model.load_state_dict(state, strict=True)
    return model.eval()
