"""Full vs LoRA training: trainable parameters, AdamW state bytes and step time, at the same model size.

Two parts:

* SD1.5 size (UNet, WriteNet, AttnX built on the meta device, no download): trainable parameters of the
  UNet / WriteNet / AttnX per variant, and AdamW state = exp_avg + exp_avg_sq in float32 = 8 bytes per
  trainable parameter (what ``torch.optim.AdamW`` allocates for float32 masters). The text embedding
  (full training in every variant, unaffected by the LoRA options) is not included.
* the tiny stack (CPU, measured): real training steps of ``AnyText2TrainingModel`` on synthetic data with
  each variant's trainable set; trainable parameters (all components), AdamW state bytes read from the
  optimizer after the steps, median step time (forward + backward + AdamW step).

    PYTHONPATH=src python benchmarks/bench_lora.py [--rank 4] [--steps 6] [--resolution 128]

One function per variant returning a dict; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from diffusers import UNet2DConditionModel  # noqa: E402

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel  # noqa: E402
from anytext2_diffusers.configs import sd15_config  # noqa: E402
from anytext2_diffusers.data import make_demo_data  # noqa: E402
from anytext2_diffusers.models.ocr import PPOCRRecognizer, load_character_list  # noqa: E402
from anytext2_diffusers.training import TrainingConfig, lora  # noqa: E402
from anytext2_diffusers.training.components import build_training_model  # noqa: E402
from anytext2_diffusers.training.data import build_datasets, make_loader  # noqa: E402
from anytext2_diffusers.training.trainable import apply_trainable  # noqa: E402


def variants(rank: int) -> dict[str, dict]:
    """Trainable-set switches per variant (everything else at the defaults)."""
    lora_opts = dict(lora_rank=rank)
    return {
        "full": {},  # WriteNet + AttnX + text embedding in full (the reference's default)
        "full_unlock_qkv": dict(unlock_qkv=True),  # + UNet cross-attention q/k/v in full
        "lora_unet": dict(lora_opts, lora_components=["unet"]),  # + UNet attention LoRA instead of --unlock_qkv
        "lora_all": dict(lora_opts, lora_components=["unet", "controlnet", "attnx"]),  # low-memory run
    }


# ------------------------------------------------------------------------------------------------
# SD1.5 size, counted on the meta device
# ------------------------------------------------------------------------------------------------
def sd15_counts(overrides: dict) -> dict:
    config = TrainingConfig(**overrides)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in sd15_config("unet").items() if not k.startswith("_")})
        parts = dict(
            unet=unet,
            controlnet=AnyText2ControlNetModel.from_unet(unet, load_weights_from_unet=False),
            attnx=AnyText2AttnXModel.from_unet(unet, load_weights_from_unet=False),
        )
        lora.add_adapters(parts, config)
    groups = apply_trainable(parts, config)
    per = {name: sum(p.numel() for _, p in groups.get(name, [])) for name in parts}
    total = sum(per.values())
    return dict(trainable=per, trainable_total=total, adamw_state_bytes=8 * total)


# ------------------------------------------------------------------------------------------------
# tiny stack, measured
# ------------------------------------------------------------------------------------------------
def _assets(root: str) -> tuple[str, str]:
    ocr = os.path.join(root, "ocr")
    torch.manual_seed(0)
    PPOCRRecognizer(
        backbone_scale=0.25, image_width=160, neck_hidden_dims=32, neck_dims=32, characters=load_character_list()
    ).save_pretrained(ocr)
    data = make_demo_data(os.path.join(root, "data"), n=8, seed=0, resolution=256, lines_per_image=(1, 3))
    return ocr, data


def tiny_step(overrides: dict, ocr: str, data: str, root: str, steps: int, resolution: int, batch: int) -> dict:
    config = TrainingConfig(
        tiny_model=True,
        ocr_model_name_or_path=ocr,
        train_data=[data],
        cache_dir=os.path.join(root, "hf"),
        output_dir=os.path.join(root, "out"),
        resolution=resolution,
        max_lines=3,
        train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        report_to="none",
        mixed_precision="no",
        **overrides,
    )
    model, groups, _ = build_training_model(config)
    params = [p for group in groups.values() for _, p in group]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    train_set, _ = build_datasets(config)
    loader = make_loader(train_set, config, shuffle=False)
    batches = [b for _, b in zip(range(2), loader)]
    times = []
    for i in range(steps + 1):  # the first step (allocations, lazy init) is not timed
        t0 = time.perf_counter()
        out = model(batches[i % len(batches)], torch.Generator().manual_seed(i))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for k, t in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    per = {name: sum(p.numel() for _, p in group) for name, group in groups.items()}
    return dict(
        trainable=per,
        trainable_total=sum(per.values()),
        adamw_state_bytes=state_bytes,
        step_time_s=statistics.median(times),
        steps_timed=len(times),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import logging

    logging.disable(logging.WARNING)
    result = {"rank": a.rank, "sd15": {}, "tiny": {}}
    for name, overrides in variants(a.rank).items():
        r = sd15_counts(overrides)
        result["sd15"][name] = r
        print(
            f"SD1.5 {name:16s} trainable UNet/WriteNet/AttnX {r['trainable_total'] / 1e6:8.2f} M "
            f"{r['trainable']}  AdamW state {r['adamw_state_bytes'] / 2**20:9.1f} MiB"
        )
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as root:
        ocr, data = _assets(root)
        for name, overrides in variants(a.rank).items():
            r = tiny_step(overrides, ocr, data, root, a.steps, a.resolution, a.batch_size)
            result["tiny"][name] = r
            print(
                f"tiny  {name:16s} trainable {r['trainable_total']:>10,}  AdamW state "
                f"{r['adamw_state_bytes'] / 2**20:7.2f} MiB  step {r['step_time_s'] * 1000:7.1f} ms"
            )
    result["settings"] = dict(
        resolution=a.resolution, batch_size=a.batch_size, steps=a.steps, threads=a.threads, device="cpu"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
