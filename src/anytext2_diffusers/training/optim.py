"""The optimizer and learning-rate schedule from the configuration (diffusers' train_controlnet.py options:
``--use_8bit_adam``, ``--lr_num_cycles``, ``--lr_power``)."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler


def optimizer_class(config):
    """torch's AdamW, or bitsandbytes' AdamW8bit (optimizer state in 8 bits) with ``--use_8bit_adam``."""
    if not config.use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError("--use_8bit_adam needs bitsandbytes: pip install 'anytext2-diffusers[bnb]'") from e
    return bnb.optim.AdamW8bit


def make_optimizer(param_groups: list, config, lr: float):
    return optimizer_class(config)(
        param_groups,
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def make_lr_scheduler(config, optimizer, max_steps: int, num_processes: int = 1):
    """diffusers' ``get_scheduler``; counts are multiplied by the processes as accelerate steps a prepared
    scheduler once per process."""
    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
