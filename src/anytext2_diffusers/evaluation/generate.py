"""Generate the AnyText-benchmark images with ``AnyText2Pipeline`` (reference ``eval/anytext2_*GPU*.py``).

Per benchmark entry: the caption with ``*`` replaced by spaces, the reference evaluation's added and
negative prompts, its lines (at most 20, texts cut to 20 characters) at their polygons, the font hint
drawn with each line's glyph font (the reference's ``fonthint_type='Arial'``), colours unspecified,
``num_samples`` images from one seeded generator, DDIM 20 steps, CFG 7.5, eta 0, 512x512. An entry
without valid lines gets the reference's stand-in: text ``' '`` in the box (0,0)-(50,50).

Files are ``{stem}_{k}.jpg`` (JPEG quality 95, OpenCV's default the reference wrote with), written
atomically; entries whose files all exist are skipped, so an interrupted run resumes. Under
``accelerate launch`` each process takes every ``num_processes``-th entry (skipping finished ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .benchmark import CANVAS_SIZE, NUM_SAMPLES, BenchmarkItem, generation_caption, load_benchmark

# reference eval/anytext2_singleGPU.py (they differ from the demo's defaults the pipeline uses)
EVAL_ADDED_PROMPT = "best quality, extremely detailed"
EVAL_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, "
    "low quality, watermark"
)
EMPTY_LINE_POLYGON = np.array([[0, 0], [0, 50], [50, 50], [50, 0]], np.float64)


@dataclass
class GenerateConfig:
    benchmark: str
    output_dir: str
    num_samples: int = NUM_SAMPLES
    resolution: int = 512
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    eta: float = 0.0
    seed: int = 100
    added_prompt: str = EVAL_ADDED_PROMPT
    negative_prompt: str = EVAL_NEGATIVE_PROMPT
    font_hint: bool = True  # draw each line with its glyph font into the font hint (reference 'Arial')
    limit: int | None = None


def output_paths(output_dir: str | Path, item: BenchmarkItem, num_samples: int) -> list[Path]:
    return [Path(output_dir) / f"{item.stem}_{k}.jpg" for k in range(num_samples)]


def pipeline_inputs(item: BenchmarkItem, config: GenerateConfig) -> dict:
    """Keyword arguments of ``AnyText2Pipeline.__call__`` for one benchmark entry."""
    from ..pipelines.inputs import default_glyph_font

    scale = config.resolution / CANVAS_SIZE
    if item.lines:
        texts = [line.text for line in item.lines]
        polygons = [line.polygon * scale for line in item.lines]
    else:
        texts, polygons = [" "], [EMPTY_LINE_POLYGON * scale]
    return dict(
        prompt=generation_caption(item.caption),
        texts=texts,
        positions=polygons,
        fonts=[default_glyph_font(t) for t in texts] if config.font_hint else None,
        height=config.resolution,
        width=config.resolution,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        eta=config.eta,
        negative_prompt=config.negative_prompt,
        added_prompt=config.added_prompt,
        num_images_per_prompt=config.num_samples,
    )


def _save_jpeg(image, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    image.convert("RGB").save(tmp, format="JPEG", quality=95)
    os.replace(tmp, path)


def generate_benchmark(pipe, config: GenerateConfig, state=None, progress: bool = False) -> dict:
    """Write the missing benchmark images of this process's share; returns counts.

    ``state``: an ``accelerate.PartialState`` (or anything with ``process_index``, ``num_processes`` and
    ``wait_for_everyone``); default: a single process.
    """
    items = load_benchmark(config.benchmark)[: config.limit]
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    # Shard the whole list, then drop finished entries: a process that starts late (and sees files
    # another process already wrote) still gets the same share, so no entry falls between shares.
    done = [all(p.is_file() for p in output_paths(out_dir, it, config.num_samples)) for it in items]
    mine = [it for i, it in enumerate(items) if i % world == rank and not done[i]]
    iterator = mine
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=f"generate [{rank}/{world}]", unit="prompt")
    for item in iterator:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        images = pipe(**pipeline_inputs(item, config), generator=generator).images
        for image, path in zip(images, output_paths(out_dir, item, config.num_samples)):
            _save_jpeg(image, path)
    if state is not None:
        state.wait_for_everyone()
    return {
        "metric": "generate",
        "output_dir": str(out_dir),
        "benchmark_items": len(items),
        "already_done": sum(done),
        "generated": len(mine),
        "process_index": rank,
        "num_processes": world,
    }


def load_pipeline(path: str, mixed_precision: str, device):
    """``AnyText2Pipeline.from_pretrained`` in the requested precision (float32 on CPU)."""
    from ..pipelines import AnyText2Pipeline
    from ..utils.dtype import dtype_kwarg

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    if torch.device(device).type == "cpu":
        dtype = torch.float32
    pipe = AnyText2Pipeline.from_pretrained(path, **dtype_kwarg(dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_from_args(args) -> dict:
    from accelerate import PartialState

    state = PartialState()
    config = GenerateConfig(
        benchmark=args.benchmark,
        output_dir=args.output_dir,
        num_samples=args.num_samples,
        resolution=args.resolution,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        eta=args.eta,
        seed=args.seed,
        added_prompt=EVAL_ADDED_PROMPT if args.a_prompt is None else args.a_prompt,
        negative_prompt=EVAL_NEGATIVE_PROMPT if args.n_prompt is None else args.n_prompt,
        font_hint=args.font_hint,
        limit=args.limit,
    )
    pipe = load_pipeline(args.pretrained_model_name_or_path, args.mixed_precision, state.device)
    return generate_benchmark(pipe, config, state, progress=args.progress)
