"""CLIPScore (Hessel et al. 2021) of generated images against their benchmark captions.

Protocol (AnyText2 ``eval/clipscore.py``): OpenAI CLIP ViT-B/32, score per image
``2.5 * max(cos(image_emb, text_emb), 0)``; the caption is the benchmark's ``caption`` as written (no
prompt prefix), tokenised with truncation to 77 tokens; the mean is taken per sample index k over the
benchmark and then over k. Images are preprocessed like OpenAI's ``clip.load`` transform: bicubic
resize of the short side to the model's input size, centre crop, CLIP mean/std normalisation. Here it
runs on a ``transformers`` ``CLIPModel`` (default ``openai/clip-vit-base-patch32``, the same weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .benchmark import NUM_SAMPLES, BenchmarkError, BenchmarkItem, load_benchmark, sample_paths

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_WEIGHT = 2.5


def clip_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """(3, size, size) float tensor: short side -> ``size`` (bicubic), centre crop, CLIP normalisation."""
    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def clip_score_from_features(image_features, text_features, weight: float = CLIP_WEIGHT) -> np.ndarray:
    """Per-pair ``weight * max(cos, 0)`` of row-aligned (N, D) feature matrices."""
    img = np.asarray(image_features, dtype=np.float64)
    txt = np.asarray(text_features, dtype=np.float64)
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return weight * np.clip(np.sum(img * txt, axis=1), 0, None)


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(model_name_or_path: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
    """``(CLIPModel, tokenizer)`` from a hub id or a local folder."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_name_or_path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    return model, tokenizer


class CLIPScorer:
    """Image and caption embeddings of a ``CLIPModel``; ``score(images, captions)`` -> per-pair CLIPScore."""

    def __init__(self, model, tokenizer, device: str | torch.device | None = None, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device or next(model.parameters()).device
        self.batch_size = batch_size
        self.image_size = model.config.vision_config.image_size
        self.max_length = min(77, model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([clip_preprocess(im, self.image_size) for im in chunk])
            feats = _features(self.model.get_image_features(pixel_values=batch.to(self.device)))
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(captions), self.batch_size):
            tokens = self.tokenizer(
                list(captions[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            tokens = {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}
            feats = _features(self.model.get_text_features(**tokens))
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        return clip_score_from_features(self.image_features(images), self.text_features(captions))


def evaluate_clip(
    images_dir: str | Path,
    benchmark: str | Path | Sequence[BenchmarkItem],
    scorer: CLIPScorer,
    num_samples: int = NUM_SAMPLES,
    skip_missing: bool = False,
    progress: bool = False,
) -> dict:
    """Mean CLIPScore of the generated images against their captions (per sample index k, then over k)."""
    items = load_benchmark(benchmark) if isinstance(benchmark, (str, Path)) else list(benchmark)
    groups: dict[int, list[tuple[Path, str]]] = {}
    missing = []
    for item in items:
        for k, path in enumerate(sample_paths(images_dir, item, num_samples)):
            if path.is_file():
                groups.setdefault(k, []).append((path, item.caption))
            else:
                missing.append(path)
    if missing and not skip_missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise BenchmarkError(f"{len(missing)} image(s) missing in {images_dir} (e.g. {shown}); pass --skip_missing")
    per_k = {}
    keys = sorted(groups)
    if progress:
        from tqdm.auto import tqdm

        keys = tqdm(keys, desc="clip", unit="sample index")
    for k in keys:
        pairs = groups[k]
        scores = []
        for start in range(0, len(pairs), scorer.batch_size):
            chunk = pairs[start : start + scorer.batch_size]
            images = []
            for path, _ in chunk:
                try:
                    with Image.open(path) as im:
                        images.append(im.convert("RGB"))
                except OSError as err:
                    raise BenchmarkError(f"cannot read image {path}: {err}") from None
            scores.append(scorer.score(images, [c for _, c in chunk]))
        per_k[k] = float(np.mean(np.concatenate(scores)))
    summary = {
        "metric": "clip",
        "clip_score": float(np.mean(list(per_k.values()))) if per_k else None,
        "per_sample_index": {str(k): v for k, v in per_k.items()},
        "images_scored": sum(len(v) for v in groups.values()),
        "missing_images": len(missing),
        "images": str(images_dir),
    }
    if isinstance(benchmark, (str, Path)):
        summary["benchmark"] = str(benchmark)
    return summary
