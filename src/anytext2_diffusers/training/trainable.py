"""Which parameters train: the reference's ``ControlLDM.configure_optimizers``, as it acts.

The reference hands AdamW WriteNet, the whole text embedding, every AttnX layer, and optionally the
UNet decoder (``sd_locked=False``) and cross-attention q/k/v (``unlockQKV``). Some of those never
receive a gradient there, so they never change; we freeze them instead of handing them to AdamW:

* the UNet encoder (``input_blocks``, ours ``down_blocks``) runs under ``no_grad`` unless it has AttnX
  layers, and the mid block unless it has AttnX: their q/k/v stay fixed even with ``unlockQKV``;
* the text embedding is computed under ``no_grad`` unless ``cond_stage_trainable`` (our
  ``train_text_embedding``);
* the font recognizer's CTC head is unused (only its neck features are), so it gets no gradient.

``select_trainable`` returns the named parameters per component; ``apply_trainable`` sets
``requires_grad`` accordingly on every component and returns the same groups.
"""

from __future__ import annotations

import re

from torch import nn

from . import lora

# UNet parameter name patterns (diffusers layout).
_QKV = re.compile(r"\.attn2\.to_[qkv]\.")
_DECODER = ("up_blocks.", "conv_norm_out.", "conv_out.")


def unet_trainable(name: str, config) -> bool:
    """The UNet rule: decoder + output with ``sd_locked`` off; cross-attention q/k/v with ``unlock_qkv``
    in the parts the reference runs with gradients (up blocks; mid block with AttnX; down blocks with AttnX)."""
    if not config.sd_locked and name.startswith(_DECODER):
        return True
    if config.unlock_qkv and _QKV.search(name):
        if name.startswith("up_blocks."):
            return True
        if name.startswith("mid_block."):
            return bool(config.attnx_mid_block)
        if name.startswith("down_blocks."):
            return bool(config.attnx_down_blocks)
    return False


def text_embedding_trainable(name: str, config) -> bool:
    if not config.train_text_embedding:
        return False
    if name.startswith("font_predictor."):
        return bool(config.train_font_ocr) and not name.startswith("font_predictor.head.")
    return True


def select_trainable(components: dict[str, nn.Module], config) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``components``: ``controlnet``, ``attnx``, ``text_embedding``, ``unet`` (others are frozen).
    Returns {component: [(name, parameter), ...]} for the components that train anything."""
    rules = {
        "controlnet": lambda name: True,
        "attnx": lambda name: True,
        "text_embedding": lambda name: text_embedding_trainable(name, config),
        "unet": lambda name: unet_trainable(name, config),
    }
    # --lora_rank: adapter weights (+ the parts that keep full training) on the LoRA components.
    rules = {component: lora.trainable_rule(component, config, rule) for component, rule in rules.items()}
    groups = {}
    for component, rule in rules.items():
        model = components.get(component)
        if model is None:
            continue
        selected = [(n, p) for n, p in model.named_parameters() if rule(n)]
        if selected:
            groups[component] = selected
    return groups


def apply_trainable(components: dict[str, nn.Module], config) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Freeze every component, then unfreeze the selection; returns it (see ``select_trainable``)."""
    for model in components.values():
        if isinstance(model, nn.Module):
            model.requires_grad_(False)
    groups = select_trainable(components, config)
    for params in groups.values():
        for _, p in params:
            p.requires_grad_(True)
    return groups


def describe(groups: dict[str, list[tuple[str, nn.Parameter]]], components: dict[str, nn.Module]) -> str:
    """One line per component: trainable / total parameters (logged at the start of training)."""
    lines = []
    for name, model in components.items():
        if not isinstance(model, nn.Module):
            continue
        total = sum(p.numel() for p in model.parameters())
        train = sum(p.numel() for _, p in groups.get(name, []))
        lines.append(f"  {name:<15} {train:>13,} / {total:>13,} trainable")
    all_train = sum(p.numel() for params in groups.values() for _, p in params)
    lines.append(f"  {'total':<15} {all_train:>13,} trainable parameters")
    return "\n".join(lines)
