"""AnyText-benchmark JSON (``laion_word/test1k.json``, ``wukong_word/test1k.json``) and image lookup.

The file is AnyWord-style: ``{"data_list": [{"img_name", "caption", "annotations": [{"polygon",
"text", "valid"?, "language"?}, ...]}, ...]}``. Line selection follows the reference evaluation:
annotations with an empty polygon or ``valid: false`` are dropped, at most ``MAX_LINES`` lines are
kept per image and each text is cut to ``MAX_CHARS`` characters (that cut text is the ground truth).
Polygons are pixel coordinates on the 512x512 canvas the benchmark images are generated at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_LINES = 20
MAX_CHARS = 20
NUM_SAMPLES = 4
CANVAS_SIZE = 512
PLACEHOLDER = "*"


class BenchmarkError(ValueError):
    """A benchmark file or image folder that cannot be evaluated; the message names file and field."""


@dataclass
class BenchmarkLine:
    text: str  # ground truth: the annotation's text cut to MAX_CHARS
    polygon: np.ndarray  # (K, 2) float64 pixel coordinates on the CANVAS_SIZE canvas
    language: str | None = None  # the annotation's ``language`` field, when the file has one


@dataclass
class BenchmarkItem:
    img_name: str
    caption: str
    lines: list[BenchmarkLine] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return sample_stem(self.img_name)


def sample_stem(img_name: str) -> str:
    """Generated images are ``{stem}_{k}.jpg`` with ``stem`` = ``img_name`` up to its first dot (the
    reference's ``split('.')[0]``; the same as ``Path.stem`` for ordinary names)."""
    return Path(img_name).name.split(".")[0]


def _parse_polygon(raw, where: str) -> np.ndarray:
    try:
        poly = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise BenchmarkError(f"{where}: 'polygon' is not a list of [x, y] points") from None
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise BenchmarkError(f"{where}: 'polygon' must be at least 3 [x, y] points, got shape {poly.shape}")
    if not np.isfinite(poly).all():
        raise BenchmarkError(f"{where}: 'polygon' has non-finite coordinates")
    return poly


def load_benchmark(path: str | Path, max_lines: int = MAX_LINES, max_chars: int = MAX_CHARS) -> list[BenchmarkItem]:
    """Parse and validate a benchmark JSON; errors name the file, the record index and the field."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(content, dict) or not isinstance(content.get("data_list"), list):
        raise BenchmarkError(f"{path}: expected an object with a 'data_list' list (AnyWord benchmark format)")
    items = []
    seen = {}
    for i, rec in enumerate(content["data_list"]):
        where = f"{path}: data_list[{i}]"
        if not isinstance(rec, dict):
            raise BenchmarkError(f"{where}: expected an object")
        name = rec.get("img_name")
        if not isinstance(name, str) or not name:
            raise BenchmarkError(f"{where}: missing or empty 'img_name'")
        caption = rec.get("caption", "")
        if not isinstance(caption, str):
            raise BenchmarkError(f"{where} ({name}): 'caption' must be a string")
        stem = sample_stem(name)
        if stem in seen:
            raise BenchmarkError(f"{where} ({name}): image stem {stem!r} repeats data_list[{seen[stem]}]")
        seen[stem] = i
        lines = []
        for j, ann in enumerate(rec.get("annotations", []) or []):
            aw = f"{where} ({name}): annotations[{j}]"
            if not isinstance(ann, dict):
                raise BenchmarkError(f"{aw}: expected an object")
            if not ann.get("polygon") or ann.get("valid", True) is False:
                continue
            text = ann.get("text")
            if not isinstance(text, str):
                raise BenchmarkError(f"{aw}: missing or non-string 'text'")
            language = ann.get("language")
            lines.append(BenchmarkLine(text[:max_chars], _parse_polygon(ann["polygon"], aw), language))
        items.append(BenchmarkItem(name, caption, lines[:max_lines]))
    return items


def generation_caption(caption: str) -> str:
    """The image caption given to the generator: the reference replaces ``*`` placeholders by spaces."""
    return caption.replace(PLACEHOLDER, " ")


def sample_paths(folder: str | Path, item: BenchmarkItem, num_samples: int = NUM_SAMPLES) -> list[Path]:
    """The images of one benchmark item: ``{stem}_{k}.jpg`` for k < num_samples when any of them exists
    (missing ones are still returned so the caller can report them), else ``{img_name}`` itself (to
    score real images), else the expected generated names."""
    folder = Path(folder)
    generated = [folder / f"{item.stem}_{k}.jpg" for k in range(num_samples)]
    if any(p.is_file() for p in generated):
        return generated
    original = folder / Path(item.img_name).name
    if original.is_file():
        return [original]
    return generated
