"""LoRA training: adapters instead of full weights on the UNet, WriteNet and/or AttnX.

``--lora_rank R`` puts adapters (``--lora_target_modules``, default the attention projections) on each of
``--lora_components``. All three models are diffusers ``PeftAdapterMixin`` models, so adapters are added,
saved, loaded and merged by diffusers and peft (``add_adapter``, ``save_lora_adapter``, ``load_lora_adapter``,
``fuse_lora`` / ``unfuse_lora`` / ``unload_lora``, peft's ``get/set_peft_model_state_dict``); this module
decides what gets adapters, what trains, and which files go where, and lifts the peft layers out while the
base components are written (``adapters_removed``: an ``unload_lora`` that can be undone). The UNet's adapter
state dict has the stock UNet's key names (AttnX lives outside the UNet), so the result is an ordinary SD1.5
UNet LoRA. WriteNet's zero-initialised convs (``controlnet_down_blocks``, ``controlnet_mid_block``,
``fuse_block``) and its glyph/position encoders keep full training and get no adapter: a LoRA delta on a
zero-initialised layer starts at zero like the layer but is confined to rank R, and these layers are small.

A layer with an adapter never trains its base weight (so merge/unmerge are exact); other parameters of a
LoRA component train only by their own rule (UNet decoder with ``--no-sd_locked``, the WriteNet parts above).

Files: checkpoints hold ``<component>_lora/`` (``save_lora_adapter``'s ``pytorch_lora_weights.safetensors``:
peft keys, the ``LoraConfig`` in the safetensors metadata; plus ``trained_base_weights.safetensors`` with the
fully trained non-adapter parameters). The final folder holds the base components (adapters removed, fully
trained parts updated), the UNet adapter as ``pytorch_lora_weights.safetensors`` in diffusers' pipeline format
(``pipe.load_lora_weights``), and ``controlnet_lora/`` / ``attnx_lora/`` ``save_lora_adapter`` folders;
``load_lora_adapters(pipe, folder)`` loads all of them. ``--merge_lora_at_end`` writes fused weights and no
adapter files; if that save fails, the adapters are unfused again, so the fallback checkpoint holds the
adapters the run trained.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.dtype import cast_model, no_empty_float32_warning
from .output import save_pipeline_folder

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
LORA_COMPONENTS = ("unet", "controlnet", "attnx")
UNET_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name
ADAPTER_WEIGHTS = UNET_LORA_WEIGHTS  # save_lora_adapter's file in <component>_lora/ (peft keys, config in metadata)
PEFT_ADAPTER_WEIGHTS = "adapter_model.safetensors"  # earlier releases wrote peft folders (+ adapter_config.json)
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
            model.add_adapter(cfg, adapter_name=ADAPTER_NAME)  # diffusers' PeftAdapterMixin, on all three
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
def save_adapter(model: nn.Module, folder: str, with_trained_base: bool = False) -> None:
    """``model.save_lora_adapter(folder)``; ``with_trained_base``: also the fully trained non-adapter parameters
    (checkpoints). Both read ``model.state_dict()``, which ``distributed.state_dict_from`` can point at
    DeepSpeed's float32 masters."""
    with no_empty_float32_warning():
        model.save_lora_adapter(folder, adapter_name=ADAPTER_NAME, weight_name=ADAPTER_WEIGHTS)
    if with_trained_base:
        values = model.state_dict()
        trained = [k for k, p in model.named_parameters() if p.requires_grad and not is_lora_param(k)]
        base = {k: values[k].detach().contiguous() for k in trained}
        if base:
            save_file(base, os.path.join(folder, BASE_WEIGHTS))


def _adapter_file(folder: str) -> str:
    """The adapter weights in ``folder``: ``save_lora_adapter``'s file, or an earlier release's peft file."""
    for name in (ADAPTER_WEIGHTS, PEFT_ADAPTER_WEIGHTS):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"{os.path.join(folder, ADAPTER_WEIGHTS)} missing (was the checkpoint written with other --lora_* switches?)"
    )


def load_adapter(model: nn.Module, folder: str) -> None:
    """Resume: read a checkpoint's ``save_adapter`` folder into the adapter ``add_adapters`` put on ``model``
    (in place with peft's ``set_peft_model_state_dict``: the optimizer holds these very parameters)."""
    path = _adapter_file(folder)
    weights = load_file(path)
    expected = set(get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME))
    if set(weights) != expected:
        raise ValueError(
            f"{path}: adapter keys do not match the model ({len(set(weights) - expected)} unexpected, "
            f"{len(expected - set(weights))} missing); same --lora_rank/--lora_target_modules/--lora_components?"
        )
    result = set_peft_model_state_dict(model, weights, adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        raise ValueError(f"{path}: peft did not place {sorted(result.unexpected_keys)[:5]}")
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
    """The base layers stand in for the peft layers (stock state dict keys for ``save_pretrained``) and the peft
    layers come back on exit: diffusers' ``unload_lora`` does the first half only, and a final save that fails
    must leave the adapters in place for the fallback checkpoint."""
    swaps = [s for model in models for s in _adapted_layers(model)]
    for parent, child, layer in swaps:
        setattr(parent, child, layer.get_base_layer())
    try:
        yield
    finally:
        for parent, child, layer in swaps:
            setattr(parent, child, layer)


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
    the earlier folder, adapters included, as it was. A failed merged save unfuses the adapters again before
    it raises, so the fallback checkpoint holds the adapters the run trained, not merged weights."""
    out = config.output_dir
    names = [name for name in LORA_COMPONENTS if has_adapter(parts[name])]
    models = [parts[name] for name in names]
    if config.merge_lora_at_end:
        fused = []
        try:
            for model in models:
                cast_model(model, torch.float32)  # merge in float32 (the base may be fp16/bf16 under mixed precision)
                model.fuse_lora(adapter_names=[ADAPTER_NAME])
                fused.append(model)
            with adapters_removed(models):
                save_pipeline_folder(parts, out, stale=ADAPTER_FILES)
        except BaseException:
            for model in fused:
                model.unfuse_lora()  # W - scale B A: the base weights as trained, beside their adapters
            raise
        for model in models:
            model.unload_lora()  # the in-memory models match the folder: merged, no adapters
        logger.info("merged the LoRA adapters of %s into the saved weights", ", ".join(names))
        return
    adapters = os.path.join(out, ADAPTER_STAGING)
    shutil.rmtree(adapters, ignore_errors=True)
    try:
        _write_adapters(parts, names, adapters)

        def move_adapters_in(staging: str) -> None:
            for entry in os.listdir(adapters):
                os.replace(os.path.join(adapters, entry), os.path.join(staging, entry))

        with adapters_removed(models):
            save_pipeline_folder(parts, out, extra_files=move_adapters_in, stale=ADAPTER_FILES)
    finally:
        shutil.rmtree(adapters, ignore_errors=True)
    logger.info("LoRA adapters of %s saved next to the base components in %s", ", ".join(names), out)


def load_lora_adapters(pipe, folder: str, adapter_name: str = ADAPTER_NAME) -> list[str]:
    """Load what a LoRA training run wrote to ``folder`` into an ``AnyText2Pipeline`` made from its base
    components: the UNet adapter through ``pipe.load_lora_weights`` and WriteNet / AttnX through their own
    ``load_lora_adapter`` (diffusers' ``set_adapters`` / ``fuse_lora`` then apply). Returns the components
    loaded."""
    loaded = []
    if os.path.isfile(os.path.join(folder, UNET_LORA_WEIGHTS)):
        pipe.load_lora_weights(folder, adapter_name=adapter_name)
        loaded.append("unet")
    for name in ("controlnet", "attnx"):
        sub = os.path.join(folder, f"{name}_lora")
        if not os.path.isdir(sub):
            continue
        model, path = getattr(pipe, name), _adapter_file(sub)
        with warnings.catch_warnings():
            # diffusers injects exactly the layers the file holds, so WriteNet's exclude_modules (kept in the
            # saved config) excludes nothing there, and peft warns that it did not.
            warnings.filterwarnings("ignore", message="You have passed exclude_modules=")
            if path.endswith(ADAPTER_WEIGHTS):
                model.load_lora_adapter(sub, prefix=None, weight_name=ADAPTER_WEIGHTS, adapter_name=adapter_name)
            else:  # an earlier release's peft folder: the LoraConfig sits in adapter_config.json
                config = LoraConfig.from_pretrained(sub).to_dict()
                model.load_lora_adapter(load_file(path), prefix=None, metadata=config, adapter_name=adapter_name)
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
