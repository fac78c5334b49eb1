"""Speed and memory switches of the training step: per-sample randomness, the VAE latent cache,
channels_last and ``torch.compile``.

Per-sample generators make a step independent of how a global batch is split over processes: sample
``i`` draws its VAE posterior noise, diffusion noise and timestep from a generator seeded by
(seed, optimizer step, dataset index), so 1 process x 2B samples and 2 processes x B samples draw the
same numbers (DDP averages the per-process mean losses into the same global mean).

The latent cache keeps the VAE posterior (mean, std) of each target image, keyed by dataset index:
target images are never augmented (``AnyText2TrainDataset`` only resizes them), so their posterior is a
constant of the record; the posterior *sample* is still drawn every step from the sample's generator,
so the loss is the same with and without the cache. The masked image of a generation-mode sample is
all -1, so its posterior is one constant; edit-mode masked images depend on the drawn lines and are
encoded live.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..utils.dtype import cast_model

logger = logging.getLogger(__name__)


def sample_generators(seed: int, step: int, indices) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, optimizer step, dataset index)."""
    gens = []
    for index in torch.as_tensor(indices).tolist():
        word = np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(1, dtype=np.uint64)[0]
        gens.append(torch.Generator().manual_seed(int(word) & 0x7FFF_FFFF_FFFF_FFFF))
    return gens


def randn(shape: tuple, generator, device=None) -> torch.Tensor:
    """(n, *shape) normal draws: from one generator, or one row per generator of a list."""
    if isinstance(generator, (list, tuple)):
        out = torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    else:
        out = torch.randn(shape, generator=generator)
    return out.to(device)


def randint(high: int, n: int, generator, device=None) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        out = torch.cat([torch.randint(0, high, (1,), generator=g) for g in generator])
    else:
        out = torch.randint(0, high, (n,), generator=generator)
    return out.to(device)


class LatentCache:
    """The constant generation-mode masked posterior (an all -1 image: always computed once per size), and
    with ``cache_images`` (``--cache_latents``) the VAE posteriors (mean, std) of target images by dataset
    index; held on the CPU in the VAE's dtype (64 KiB per 512 px sample in fp16).

    One cache per process; each fills it with the samples it sees, so from the second epoch on the VAE
    encoder runs only for edit-mode masked images. Posterior samples are still drawn every step."""

    def __init__(self, cache_images: bool = True):
        self.cache_images = cache_images
        self.images: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.blank: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.images)

    def posteriors(self, batch, encode) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((mean, std) of the images, (mean, std) of the masked images) for ``batch``; ``encode`` maps
        a float image batch in [-1, 1] to (mean, std). Everything not cached goes through one VAE call."""
        n = len(batch)
        shape = tuple(batch.image.shape[1:])
        if self.cache_images:
            if batch.index is None:
                raise ValueError("--cache_latents needs Batch.index (the dataset index of every sample)")
            keys = batch.index.tolist()
            missing, seen = [], set()  # first row of each uncached index (an index may repeat in a batch)
            for i, key in enumerate(keys):
                if key not in self.images and key not in seen:
                    seen.add(key)
                    missing.append(i)
        else:
            keys, missing = None, list(range(n))
        edit = batch.edit_mode.tolist()
        edit_rows = [i for i in range(n) if edit[i]]
        need_blank = not all(edit) and shape not in self.blank
        parts = []
        if missing:
            parts.append(batch.image_float()[missing])
        if edit_rows:
            parts.append(batch.masked_image_float()[edit_rows])
        if need_blank:
            parts.append(torch.full((1, *shape), -1.0))
        mean = std = None
        if parts:
            mean, std = encode(torch.cat(parts))
            mean, std = mean.cpu(), std.cpu()
        self.hits += n - len(missing)
        self.misses += len(missing)
        k = len(missing)
        if self.cache_images:
            for j, i in enumerate(missing):
                self.images[keys[i]] = (mean[j].clone(), std[j].clone())
            image = tuple(torch.stack([self.images[key][c] for key in keys]) for c in (0, 1))
        else:
            image = (mean[:n], std[:n])
        live = {i: (mean[k + j], std[k + j]) for j, i in enumerate(edit_rows)}
        if need_blank:
            self.blank[shape] = (mean[-1].clone(), std[-1].clone())
        masked = tuple(torch.stack([live[i][c] if edit[i] else self.blank[shape][c] for i in range(n)]) for c in (0, 1))
        return image, masked


def use_channels_last(*models) -> None:
    """NHWC weights for the convolution-heavy models (UNet, WriteNet): faster convolutions on tensor
    cores under fp16/bf16. Not for the VAE encoder input (it changes its numerics, see step.py)."""
    for model in models:
        model.to(memory_format=torch.channels_last)


def compile_models(model, backend: str = "inductor", mode: str | None = None) -> None:
    """``torch.compile`` the UNet and WriteNet of an ``AnyText2TrainingModel`` in place (their
    ``forward``; AttnX runs inside the UNet's blocks through hooks and is traced with it). In place keeps
    the parameter names, so checkpoints and ``save_pretrained`` see no ``_orig_mod.`` prefix."""
    for name in ("unet", "controlnet"):
        getattr(model, name).compile(backend=backend, mode=mode)
    logger.info("torch.compile: unet, controlnet (backend=%s, mode=%s)", backend, mode or "default")


def _move(model, device, dtype) -> None:
    """``model.to`` that leaves the dtype alone when it already matches (diffusers warns on every cast)."""
    model.to(device)
    if model.dtype != dtype:
        cast_model(model, dtype)


def _upcast_trainable_layers(model) -> None:
    """Layers holding trainable weights get float32 buffers too: a BatchNorm with float32 weights but
    half-precision running statistics fails on the CPU and loses precision on the GPU."""
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != torch.float32:
                    setattr(module, name, buf.float())


def setup_training_model(parts: dict, config, device, weight_dtype: torch.dtype, upcast_buffers: bool = True):
    """The one model set-up of the loop, the tests and the benchmark: LoRA adapters (``--lora_rank``), the
    trainable selection, frozen weights in ``weight_dtype`` and trainable ones as float32 masters (with
    float32 buffers in their layers), gradient checkpointing, channels_last, torch.compile.
    ``upcast_buffers=False`` (DeepSpeed): the engine casts every parameter to its fp16/bf16 and keeps the
    float32 masters itself, so the buffers stay in ``weight_dtype`` with their layers' weights.
    Returns (``AnyText2TrainingModel``, trainable groups)."""
    from diffusers.training_utils import cast_training_params

    from . import lora
    from .components import TRAINABLE_COMPONENTS
    from .precision import align_layer_inputs
    from .step import AnyText2TrainingModel, FrozenParts
    from .trainable import apply_trainable

    trainable = {name: parts[name] for name in TRAINABLE_COMPONENTS}
    lora.add_adapters(trainable, config)  # before the trainable selection
    groups = apply_trainable(trainable, config)
    for name in ("vae", "text_encoder", "ocr"):
        _move(parts[name], device, weight_dtype)
    for name, model in trainable.items():
        half = name in ("unet", "text_embedding", *lora.lora_components(config))
        _move(model, device, weight_dtype if half else torch.float32)
        cast_training_params(model, dtype=torch.float32)
        if upcast_buffers:
            _upcast_trainable_layers(model)
    if weight_dtype != torch.float32:  # half-precision frozen layers next to float32 trainable ones
        align_layer_inputs(*(parts[name] for name in (*TRAINABLE_COMPONENTS, "vae", "text_encoder", "ocr")))
    if config.gradient_checkpointing:
        parts["controlnet"].enable_gradient_checkpointing()
        parts["unet"].enable_gradient_checkpointing()
    if getattr(config, "channels_last", False):
        use_channels_last(parts["unet"], parts["controlnet"])
    frozen = FrozenParts(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["ocr"], parts["scheduler"])
    model = AnyText2TrainingModel(
        parts["unet"], parts["controlnet"], parts["attnx"], parts["text_embedding"], frozen, config
    )
    if getattr(config, "torch_compile", False):
        compile_models(model, config.torch_compile_backend, config.torch_compile_mode)
    return model, groups


def build_training_model(config, device="cpu", dtype=torch.float32, base: dict | None = None):
    """(AnyText2TrainingModel in train mode, trainable groups, components) without Accelerate, for tests and
    ``benchmarks/bench_train_step.py``. ``base``: SD1.5 parts (unet, vae, text_encoder, tokenizer,
    scheduler) to build on instead of ``config``'s model."""
    from .components import _new_anytext2_parts, load_components

    parts = load_components(config) if base is None else _new_anytext2_parts(base, config)
    model, groups = setup_training_model(parts, config, device, dtype)
    return model.train(), groups, parts
