"""LoRA training with peft: adapters instead of full weights on the UNet, WriteNet and/or AttnX.

``--lora_rank R`` puts adapters (``--lora_target_modules``, default the attention projections) on each of
``--lora_components``:

* ``unet``: ``unet.add_adapter`` (diffusers' PeftAdapterMixin); the adapter state dict has the stock UNet's
  key names (AttnX lives outside the UNet), so the result is an ordinary SD1.5 UNet LoRA;
* ``controlnet`` (WriteNet) and ``attnx``: peft's ``inject_adapter_in_model``. WriteNet's zero-initialised
  convs (``controlnet_down_blocks``, ``controlnet_mid_block``, ``fuse_block``) and its glyph/position
  encoders keep full training and get no adapter: a LoRA delta on a zero-initialised layer starts at zero
  like the layer but is confined to rank R, and these layers are small.

A layer with an adapter never trains its base weight (so merge/unmerge are exact); other parameters of a
LoRA component train only by their own rule (UNet decoder with ``--no-sd_locked``, the WriteNet parts above).

Files: checkpoints hold ``<component>_lora/`` (peft ``adapter_config.json`` + ``adapter_model.safetensors``,
plus ``trained_base_weights.safetensors`` with the fully trained non-adapter parameters). The final folder
holds the base components (adapters removed, fully trained parts updated), the UNet adapter as
``pytorch_lora_weights.safetensors`` in diffusers' format, and ``controlnet_lora/`` / ``attnx_lora/`` peft
folders; ``load_lora_adapters(pipe, folder)`` loads all of them. ``--merge_lora_at_end`` writes merged
weights and no adapter files.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .output import save_pipeline_folder

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
LORA_COMPONENTS = ("unet", "controlnet", "attnx")
UNET_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's
BASE_WEIGHTS = "trained_base_weights.safetensors"  # checkpoints: fully trained parameters of a LoRA component
# WriteNet parts that keep full training (module path prefixes); no adapter is put on them.
WRITENET_FULL = ("controlnet_down_blocks", "controlnet_mid_block", "fuse_block", "glyph_block", "position_block")


def lora_components(config) -> tuple[str, ...]:
    """The components that get adapters in this run (empty without ``--lora_rank``)."""
    if not config.lora_rank:
        return ()
    return tuple(name for name in LORA_COMPONENTS if name in config.lora_components)


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def lora_config(config, component: str) -> LoraConfig:
    rank = int(config.lora_rank)
    return LoraConfig(
        r=rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else rank,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        exclude_modules=rf"({'|'.join(WRITENET_FULL)})(\..*)?" if component == "controlnet" else None,
        init_lora_weights=True,  # B = 0: training starts from the base model's outputs
    )


def add_adapters(components: dict[str, nn.Module], config) -> None:
    """Inject the LoRA adapters of this run (in place, before the trainable selection)."""
    _warn_unused_adapter_files(config)
    for name in lora_components(config):
        model, cfg = components[name], lora_config(config, name)
        try:
            if name == "unet":
                model.add_adapter(cfg, adapter_name=ADAPTER_NAME)
            else:
                inject_adapter_in_model(cfg, model, adapter_name=ADAPTER_NAME)
        except ValueError as err:
            raise ValueError(f"--lora_target_modules {config.lora_target_modules} on {name}: {err}") from err
        n = sum(p.numel() for k, p in model.named_parameters() if is_lora_param(k))
        logger.info("LoRA rank %d on %s: %d adapter parameters", cfg.r, name, n)


def trainable_rule(component: str, config, full_rule: Callable[[str], bool]) -> Callable[[str], bool]:
    """The parameter rule of ``component`` under LoRA: adapter weights, plus what ``full_rule`` (UNet) or the
    WriteNet list selects outside adapted layers. Components without adapters keep ``full_rule``."""
    if component not in lora_components(config):
        return full_rule
    if component == "controlnet":
        full = lambda name: name.startswith(tuple(p + "." for p in WRITENET_FULL))  # noqa: E731
    elif component == "unet":
        full = full_rule
    else:
        full = lambda name: False  # noqa: E731
    return lambda name: is_lora_param(name) or (".base_layer." not in name and full(name))


def has_adapter(model) -> bool:
    return ADAPTER_NAME in (getattr(model, "peft_config", None) or {})


# ------------------------------------------------------------------------------------------------
# adapter folders (checkpoints, final output)
# ------------------------------------------------------------------------------------------------
def save_adapter(
    model: nn.Module, folder: str, with_trained_base: bool = False, state_dict: dict | None = None
) -> None:
    """peft adapter folder; ``with_trained_base``: also the fully trained non-adapter parameters (checkpoints).
    ``state_dict``: the weights to write instead of the model's own (``distributed.gather``: DeepSpeed's
    float32 masters)."""
    os.makedirs(folder, exist_ok=True)
    model.peft_config[ADAPTER_NAME].save_pretrained(folder)
    weights = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER_NAME)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, os.path.join(folder, ADAPTER_WEIGHTS))
    if with_trained_base:
        values = state_dict if state_dict is not None else dict(model.named_parameters())
        trained = [k for k, p in model.named_parameters() if p.requires_grad and not is_lora_param(k)]
        base = {k: values[k].detach().contiguous() for k in trained}
        if base:
            save_file(base, os.path.join(folder, BASE_WEIGHTS))


def load_adapter(model: nn.Module, folder: str, inject: bool = False) -> None:
    """Read a ``save_adapter`` folder into ``model`` (``inject``: add the adapter first, as in inference)."""
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing (was the checkpoint written with other --lora_* switches?)")
    if inject:
        cfg = LoraConfig.from_pretrained(folder)
        cfg.inference_mode = True
        inject_adapter_in_model(cfg, model, adapter_name=ADAPTER_NAME)
    weights = load_file(path)
    expected = set(get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME))
    if set(weights) != expected:
        raise ValueError(
            f"{path}: adapter keys do not match the model ({len(set(weights) - expected)} unexpected, "
            f"{len(expected - set(weights))} missing); same --lora_rank/--lora_target_modules/--lora_components?"
        )
    result = set_peft_model_state_dict(model, weights, adapter_name=ADAPTER_NAME)
    assert not result.unexpected_keys, result.unexpected_keys
    base_path = os.path.join(folder, BASE_WEIGHTS)
    if os.path.isfile(base_path):
        result = model.load_state_dict(load_file(base_path), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{base_path}: unknown parameters {result.unexpected_keys[:5]}")


def _adapted_layers(model: nn.Module) -> list[tuple[nn.Module, str, BaseTunerLayer]]:
    """(parent, attribute, peft layer) for every layer with an adapter."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            found.append((model.get_submodule(parent_name) if parent_name else model, child, module))
    return found


@contextmanager
def adapters_removed(models: list[nn.Module]) -> Iterator[None]:
    """The base layers stand in for the peft layers (stock state dict keys for ``save_pretrained``)."""
    swaps = [s for model in models for s in _adapted_layers(model)]
    for parent, child, layer in swaps:
        setattr(parent, child, layer.get_base_layer())
    try:
        yield
    finally:
        for parent, child, layer in swaps:
            setattr(parent, child, layer)


def merge_adapters(model: nn.Module) -> None:
    """W <- W + scale * B A in every adapted layer, then drop the peft layers (in place)."""
    for parent, child, layer in _adapted_layers(model):
        layer.merge(adapter_names=[ADAPTER_NAME])
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if getattr(model, "_hf_peft_config_loaded", False):
        model._hf_peft_config_loaded = False


# ------------------------------------------------------------------------------------------------
# final folder
# ------------------------------------------------------------------------------------------------
# What a LoRA run adds to the final folder; an earlier run's copies would load on top of new weights.
ADAPTER_FILES = (UNET_LORA_WEIGHTS, *(f"{name}_lora" for name in LORA_COMPONENTS))
ADAPTER_STAGING = ".lora.partial"  # adapters written while the peft layers are in place, before the swap


def _write_adapters(parts: dict, names: list[str], folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        model = parts[name]
        if name == "unet":
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME))
            StableDiffusionPipeline.save_lora_weights(
                folder,
                unet_lora_layers={k: v.detach().float().contiguous() for k, v in layers.items()},
                unet_lora_adapter_metadata=model.peft_config[ADAPTER_NAME].to_dict(),
            )
        else:
            save_adapter(model, os.path.join(folder, f"{name}_lora"))


def save_final(parts: dict, config) -> None:
    """The pipeline folder with base components + adapter files, or (``--merge_lora_at_end``) merged weights.
    Adapters go into the staged folder and move in with it (``save_pipeline_folder``): a failed save leaves
    the earlier folder, adapters included, as it was."""
    out = config.output_dir
    names = [name for name in LORA_COMPONENTS if has_adapter(parts[name])]
    if config.merge_lora_at_end:
        for name in names:
            parts[name].to(torch.float32)  # merge into float32 (the base may be fp16/bf16 under mixed precision)
            merge_adapters(parts[name])
        save_pipeline_folder(parts, out, stale=ADAPTER_FILES)
        logger.info("merged the LoRA adapters of %s into the saved weights", ", ".join(names))
        return
    adapters = os.path.join(out, ADAPTER_STAGING)
    shutil.rmtree(adapters, ignore_errors=True)
    try:
        _write_adapters(parts, names, adapters)

        def move_adapters_in(staging: str) -> None:
            for entry in os.listdir(adapters):
                os.replace(os.path.join(adapters, entry), os.path.join(staging, entry))

        with adapters_removed([parts[name] for name in names]):
            save_pipeline_folder(parts, out, extra_files=move_adapters_in, stale=ADAPTER_FILES)
    finally:
        shutil.rmtree(adapters, ignore_errors=True)
    logger.info("LoRA adapters of %s saved next to the base components in %s", ", ".join(names), out)


def load_lora_adapters(pipe, folder: str, adapter_name: str = ADAPTER_NAME) -> list[str]:
    """Load what a LoRA training run wrote to ``folder`` into an ``AnyText2Pipeline`` made from its base
    components: the UNet adapter through diffusers (``pipe.load_lora_weights``; ``set_adapters`` /
    ``fuse_lora`` then apply) and the WriteNet / AttnX peft folders. Returns the components loaded."""
    loaded = []
    if os.path.isfile(os.path.join(folder, UNET_LORA_WEIGHTS)):
        pipe.load_lora_weights(folder, adapter_name=adapter_name)
        loaded.append("unet")
    for name in ("controlnet", "attnx"):
        sub = os.path.join(folder, f"{name}_lora")
        if os.path.isdir(sub):
            load_adapter(getattr(pipe, name), sub, inject=True)
            loaded.append(name)
    return loaded


def _warn_unused_adapter_files(config) -> None:
    """Fine-tuning from a LoRA run's folder loads its base components only: say so."""
    path = config.pretrained_model_name_or_path
    if not path or not os.path.isdir(path):
        return
    found = [UNET_LORA_WEIGHTS] if os.path.isfile(os.path.join(path, UNET_LORA_WEIGHTS)) else []
    found += [f"{n}_lora/" for n in LORA_COMPONENTS if os.path.isdir(os.path.join(path, f"{n}_lora"))]
    if found:
        logger.warning(
            "%s holds LoRA adapters (%s) that training does not load: it starts from the base components. "
            "To continue from the adapted model, merge first (load_lora_adapters + fuse, or --merge_lora_at_end).",
            path,
            ", ".join(found),
        )
