"""Shared pieces of the training tests: a small recognizer, small AnyWord-format data, a tiny config.

Kept small for 2 shared CPU cores: 64 px images, 1-2 text lines, a reduced PP-OCRv3-shaped recognizer
(random weights, 160 px wide input, quarter-width backbone), batch 2.
"""

from __future__ import annotations

import os

import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from anytext2_diffusers.data import make_demo_data
from anytext2_diffusers.models.ocr import PPOCRRecognizer, load_character_list
from anytext2_diffusers.training import TrainingCallback, TrainingConfig


def save_small_recognizer(folder: str) -> str:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        torch.manual_seed(0)
        recognizer = PPOCRRecognizer(
            backbone_scale=0.25, image_width=160, neck_hidden_dims=32, neck_dims=32, characters=load_character_list()
        )
        recognizer.save_pretrained(folder)
    return folder


def make_data(folder: str, n: int, seed: int, with_faults: bool = False) -> str:
    """AnyWord JSON with ``n`` synthetic 128 px images of 1-2 lines each (+ broken records with ``with_faults``)."""
    return make_demo_data(folder, n=n, seed=seed, resolution=128, lines_per_image=(1, 2), with_faults=with_faults)


def tiny_config(output_dir: str, train_json: str, ocr_dir: str, **overrides) -> TrainingConfig:
    values = dict(
        tiny_model=True,
        ocr_model_name_or_path=ocr_dir,
        train_data=[train_json],
        output_dir=output_dir,
        cache_dir=os.path.join(os.path.dirname(output_dir), "hf_cache"),
        resolution=64,
        max_lines=2,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        max_train_steps=3,
        checkpointing_epochs=0,
        checkpointing_steps=None,
        validation_steps=None,
        num_validation_images=1,
        max_validation_batches=1,
        validation_num_inference_steps=2,
        report_to="none",
        mixed_precision="no",
        seed=0,
    )
    values.update(overrides)
    return TrainingConfig(**values)


class Recorder(TrainingCallback):
    """Per optimizer step: the dataset indices trained on and the logged scalars."""

    def __init__(self):
        self.indices, self.logs = {}, {}

    def on_step_end(self, state, logs, batch_indices):
        self.indices[state.global_step] = list(batch_indices)
        self.logs[state.global_step] = dict(logs)


def trainable_weights(folder: str) -> dict[str, torch.Tensor]:
    """``component.key`` -> tensor of the trainable components saved in ``folder`` (output or checkpoint)."""
    out = {}
    for name in ("controlnet", "attnx", "text_embedding"):
        for key, value in load_file(os.path.join(folder, name, "diffusion_pytorch_model.safetensors")).items():
            out[f"{name}.{key}"] = value
    return out


def reset_accelerate() -> None:
    """Each train() call builds its own Accelerator; drop accelerate's process-wide singletons in between."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
