"""AnyWord record -> AnyText2 training sample (the reference T3DataSet semantics), and collate -> Batch.

A sample is a pure function of (seed, epoch, index): all randomness comes from a
``numpy.random.Generator`` seeded with those three numbers, and rows are never modified.
Faulty records are neutralised or substituted, never fatal; each fault is listed in the sample so
that counts survive DataLoader workers (see ``FaultCounter``).
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch
from PIL import Image

from . import render
from .batch import UNSPECIFIED_COLOR, Batch, pack_bits
from .fonts import FontRegistry, missing_chars

logger = logging.getLogger(__name__)

# The reference's phrase list lacks a comma after 'Text: ', which glues it to ' ' (6 phrases, one
# of them 'Text:  '). Fixed: 7 phrases.
TEXT_CAPTION_PHRASES = (
    "Text says ",
    "Image with words ",
    "The picture reads ",
    "Captions are ",
    "Texts are ",
    "Text: ",
    " ",
)
PLACEHOLDER_POLYGON = ((10, 10), (100, 10), (100, 100), (10, 100))
MAX_SUBSTITUTIONS = 16


@dataclass
class DataConfig:
    """Sample settings; defaults are the reference train.py's (see docs/data.md)."""

    resolution: int = 512  # T3DataSet img_wh
    max_lines: int = 5
    max_chars: int = 20
    placeholder: str = "*"
    mask_pos_prob: float = 1.0
    mask_ratio: float = 0.0  # train.py mask_ratio -> T3DataSet mask_img_prob (edit-mode probability)
    glyph_scale: int = 1  # the WriteNet's glyph_scale
    trunc_cap: int = 128  # caption word limit (0 = keep all)
    cap_watermark: bool = True
    rand_font: bool = True
    font_config: str | None = None  # JSON/YAML language->fonts mapping or a folder with one; None = bundled
    font_hint_prob: float = 0.8
    font_hint_area: tuple = (0.7, 1.0)
    font_hint_randaug: bool = True
    color_prob: float = 1.0
    render_glyph: bool = True
    # record selection (used when loading, see anyword.load_anyword)
    wm_thresh: float = 1.0
    percent: float = 1.0

    def __post_init__(self):
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        self.font_hint_area = tuple(self.font_hint_area)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """One rendered sample (numpy, real lines only; padding happens in collate)."""

    image: np.ndarray  # uint8 (3,H,W)
    edit_mode: bool
    image_caption: str
    text_caption: str
    texts: list
    languages: list
    colors: np.ndarray  # int16 (n,3)
    glyph_lines: np.ndarray  # bool (n,80,512)
    positions: np.ndarray  # bool (n,H,W)
    glyphs: np.ndarray  # bool (gH,gW)
    font_hint: np.ndarray  # bool (H,W)
    inv_mask: np.ndarray  # bool (H,W)
    index: int = -1
    faults: tuple = ()
    polygons: list = field(default_factory=list)  # selected lines' polygons (int32, pixels) for previews

    @property
    def n_lines(self) -> int:
        return len(self.texts)

    @property
    def masked_image(self) -> np.ndarray:
        if not self.edit_mode:
            return np.zeros_like(self.image)
        return self.image * ~self.positions.any(axis=0)[None]


# ------------------------------------------------------------------------------------------------
# fault accounting
# ------------------------------------------------------------------------------------------------
FAULT_KINDS = {
    "missing_image": "image file missing; another record substituted",
    "corrupt_image": "image not decodable; another record substituted",
    "bad_polygon": "polygon with < 3 points or non-finite coordinates; line dropped",
    "polygon_outside": "polygon entirely outside the image; line dropped",
    "float_polygon": "polygon with non-integer coordinates; rounded",
    "empty_text": "empty/whitespace text; line moved to inv_mask",
    "missing_glyph": "characters the font lacks; another font used or characters removed",
    "unknown_language": "language without fonts; default font used",
    "missing_caption": "no caption; empty caption used",
    "missing_color": "no colour; 500,500,500 (unspecified) used",
    "placeholder_in_caption": "placeholder character in caption; replaced by a space",
    "no_loadable_image": "no readable image near this index; blank sample",
}
_logged_kinds: set = set()


def _note(faults: list, kind: str, detail: str) -> None:
    faults.append(kind)
    if kind not in _logged_kinds:  # once per kind per process
        _logged_kinds.add(kind)
        logger.warning("data fault %s (%s): %s; further ones are counted silently", kind, FAULT_KINDS[kind], detail)


class FaultCounter:
    """Sums the faults listed in batches (works across DataLoader workers); summary at epoch end."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.samples = 0

    def update(self, batch_or_samples) -> None:
        faults = (
            batch_or_samples.faults if isinstance(batch_or_samples, Batch) else [s.faults for s in batch_or_samples]
        )
        for f in faults:
            self.samples += 1
            self.counts.update(f)

    def summary(self) -> str:
        if not self.counts:
            return f"data faults: none in {self.samples} samples"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"data faults in {self.samples} samples: {parts}"


# ------------------------------------------------------------------------------------------------
# captions
# ------------------------------------------------------------------------------------------------
def truncate_caption(text: str, max_words: int, rng: np.random.Generator) -> str:
    """The reference's caption rule: <= max_words words; otherwise the first sentence plus randomly
    chosen further sentences until the limit (the last one cut). Input is first cut to 500 chars."""
    text = text[:500]
    if len(text.split()) <= max_words:
        return text
    sentences = text.split(".")
    first = sentences[0].strip()
    rest = sentences[1:]
    words = len(first.split())
    if words >= max_words:
        return " ".join(first.split()[:max_words])
    out = first
    while words < max_words and rest:
        sw = rest.pop(int(rng.integers(len(rest)))).strip().split()
        if words + len(sw) > max_words:
            sw = sw[: max_words - words] + ["."]
        if sw:
            out += ". " + " ".join(sw)
            words += len(sw)
    return out


def make_text_caption(n_lines: int, rng: np.random.Generator, placeholder: str = "*") -> str:
    """'<phrase>* , * . ' with one placeholder per line."""
    phrase = TEXT_CAPTION_PHRASES[int(rng.integers(len(TEXT_CAPTION_PHRASES)))]
    return phrase + " , ".join([placeholder] * n_lines) + " . "


@lru_cache(maxsize=1)
def _t2s():
    try:
        from opencc import OpenCC
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Chinese lines need OpenCC: pip install opencc-python-reimplemented") from e
    return OpenCC("t2s")


@lru_cache(maxsize=65536)
def chinese_variant(text: str) -> str:
    """'Chinese_tra' if converting to simplified changes the text, else 'Chinese_sim' (reference rule)."""
    return "Chinese_tra" if _t2s().convert(text) != text else "Chinese_sim"


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
def _open_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        if image.get("bytes"):
            return Image.open(io.BytesIO(image["bytes"]))
        image = image.get("path")
    if not image or not os.path.exists(image):
        raise FileNotFoundError(image)
    return Image.open(image)


@dataclass
class _Line:
    polygon: np.ndarray  # int32 (N,2) at the output resolution
    text: str
    language: str
    color: tuple
    font: str = ""


class AnyText2TrainDataset(torch.utils.data.Dataset):
    """Renders AnyText2 training samples from AnyWord rows (a ``datasets.Dataset`` or a list of dicts).

    ``dataset[i]`` uses the current epoch (``set_epoch``); ``dataset[(epoch, i)]`` names it explicitly,
    which keeps samples right with persistent DataLoader workers (see ``EpochSampler``).
    """

    def __init__(self, rows, config: DataConfig | None = None, seed: int = 0, fonts: FontRegistry | None = None):
        self.rows = rows
        self.config = config or DataConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.fonts = fonts or FontRegistry.from_path(self.config.font_config)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return self.render(index, rng)

    # -- steps ---------------------------------------------------------------------------------
    def _load_image(self, index: int, faults: list):
        """(row, uint8 HxWx3 at resolution, (sx, sy) polygon scale); substitutes unreadable images."""
        n = len(self.rows)
        for k in range(min(MAX_SUBSTITUTIONS, n)):
            i = (index + k) % n
            row = self.rows[i]
            try:
                img = _open_image(row.get("image"))
                img = np.asarray(img.convert("RGB"))
            except FileNotFoundError:
                _note(faults, "missing_image", f"record {i} ({row.get('img_name')})")
                continue
            except Exception as e:  # noqa: BLE001 - any decoder error means a corrupt file
                _note(faults, "corrupt_image", f"record {i} ({row.get('img_name')}): {e}")
                continue
            h, w = img.shape[:2]
            R = self.config.resolution
            if (h, w) != (R, R):
                img = cv2.resize(img, (R, R))
            return i, row, np.ascontiguousarray(img), (R / w, R / h)
        _note(faults, "no_loadable_image", f"records {index}..{index + MAX_SUBSTITUTIONS - 1}")
        R = self.config.resolution
        return index, {"caption": "", "annotations": []}, np.zeros((R, R, 3), np.uint8), (1.0, 1.0)

    def _caption(self, row, rng, faults) -> str:
        cfg = self.config
        cap = row.get("caption")
        if cap is None:
            _note(faults, "missing_caption", f"{row.get('img_name')}")
            cap = ""
        wm = row.get("wm_score")
        if wm is not None and cfg.cap_watermark:
            cap += " with watermarks " if wm > 0.5 else " no watermarks "
        if cfg.placeholder in cap:
            _note(faults, "placeholder_in_caption", f"{row.get('img_name')}")
            cap = cap.replace(cfg.placeholder, " ")
        if cfg.trunc_cap > 0:  # the reference appends '. ' before truncating
            cap = truncate_caption(cap + ". ", cfg.trunc_cap, rng)
        return cap

    def _polygon(self, raw, scale, faults, name) -> np.ndarray | None:
        try:
            p = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            _note(faults, "bad_polygon", f"{name}: {raw!r:.60}")
            return None
        if len(p) < 3 or not np.isfinite(p).all():
            _note(faults, "bad_polygon", f"{name}: {raw!r:.60}")
            return None
        if not np.array_equal(p, np.round(p)):
            _note(faults, "float_polygon", f"{name}")
        p = np.round(p * scale).astype(np.int32)
        R = self.config.resolution
        if p[:, 0].max() < 0 or p[:, 1].max() < 0 or p[:, 0].min() >= R or p[:, 1].min() >= R:
            _note(faults, "polygon_outside", f"{name}")
            return None
        return p

    def _lines(self, row, scale, rng, faults):
        lines, invalid = [], []
        name = row.get("img_name")
        for a in row.get("annotations") or []:
            raw = a.get("polygon")
            if raw is None or len(raw) == 0:  # the reference skips empty polygons silently
                continue
            poly = self._polygon(raw, np.asarray(scale), faults, name)
            if poly is None:
                continue
            if a.get("valid") is False:
                invalid.append(poly)
                continue
            text = a.get("text") or ""
            if not text.strip():
                _note(faults, "empty_text", f"{name}")
                invalid.append(poly)
                continue
            lang = a.get("language") or ""
            if lang == "Chinese":
                lang = chinese_variant(text)
            color = a.get("color")
            if color is None or len(color) != 3:
                _note(faults, "missing_color", f"{name}")
                color = (UNSPECIFIED_COLOR,) * 3
            line = _Line(poly, text, lang, tuple(int(round(c)) for c in color))
            line.font, line.text = self._font(line, rng, faults)
            if not line.text.strip():  # nothing drawable is left
                invalid.append(poly)
                continue
            lines.append(line)
        return lines, invalid

    def _font(self, line: _Line, rng, faults) -> tuple[str, str]:
        """(font path, text drawable by it). Random font per line with rand_font, else the language's first."""
        cands, known = self.fonts.fonts_for(line.language)
        if not known and line.text.strip():
            _note(faults, "unknown_language", f"{line.language!r}")
        font = cands[int(rng.integers(len(cands)))] if self.config.rand_font else cands[0]
        text = line.text
        if missing_chars(font, text):
            for alt in list(cands) + [self.fonts.default_font] + list(self.fonts.all_fonts()):
                if not missing_chars(alt, text):
                    _note(
                        faults,
                        "missing_glyph",
                        f"{text!r} not in {os.path.basename(font)}; using {os.path.basename(alt)}",
                    )
                    return alt, text
            miss = set(missing_chars(font, text))
            _note(faults, "missing_glyph", f"{text!r}: no font has {''.join(sorted(miss))!r}; removed")
            text = "".join(c for c in text if c not in miss)
        return font, text

    def render(self, index: int, rng: np.random.Generator) -> Sample:
        """The sample of one record; reads ``self.rows`` only, never writes it."""
        cfg = self.config
        R, L = cfg.resolution, cfg.max_lines
        faults: list = []
        edit_mode = bool(rng.random() < cfg.mask_ratio)
        index, row, img, scale = self._load_image(index, faults)
        caption = self._caption(row, rng, faults)
        lines, invalid = self._lines(row, scale, rng, faults)
        if not lines:  # the reference's placeholder line keeps every rank's collectives in step
            lines = [
                _Line(
                    np.array(PLACEHOLDER_POLYGON, np.int32),
                    " ",
                    "Latin",
                    (UNSPECIFIED_COLOR,) * 3,
                    self.fonts.fonts_for("Latin")[0][0],
                )
            ]
        if len(lines) > L:
            order = rng.permutation(len(lines))
            invalid += [lines[i].polygon for i in order[L:]]
            lines = [lines[i] for i in order[:L]]
        colors = [ln.color for ln in lines]
        if cfg.color_prob < 1.0:
            colors = [c if rng.random() < cfg.color_prob else (UNSPECIFIED_COLOR,) * 3 for c in colors]
        text_caption = make_text_caption(len(lines), rng, cfg.placeholder)

        gS = R * cfg.glyph_scale
        glyphs = np.zeros((gS, gS), dtype=bool)
        glyph_lines = np.zeros((len(lines), *render.GLYPH_LINE_HW), dtype=bool)
        texts = []
        for j, ln in enumerate(lines):
            font, text = ln.font, ln.text[: cfg.max_chars]
            texts.append(text)
            glyph_lines[j] = render.render_glyph_line(font, text)
            if cfg.render_glyph:
                render.render_glyph_in_polygon(glyphs, font, text, ln.polygon, colors[j], cfg.glyph_scale)

        positions = np.zeros((len(lines), R, R), dtype=bool)
        font_hint = np.zeros((R, R), dtype=bool)
        for j, ln in enumerate(lines):
            drawn = rng.random() < cfg.mask_pos_prob
            morph_u = rng.random()
            positions[j] = render.render_position(ln.polygon, R, morph_u if drawn else None)
            if cfg.font_hint_prob > 0 and rng.random() < cfg.font_hint_prob:
                aug = rng.random(4) if cfg.font_hint_randaug else np.full(4, 0.5)
                area, start = rng.random(2)
                draws = render.FontHintDraws(*aug, area, start)
                render.render_font_hint(font_hint, img, ln.polygon, draws, cfg.font_hint_area, cfg.font_hint_randaug)

        inv_mask = render.render_polygons([] if edit_mode else invalid, R)  # edit mode clears it (reference)
        return Sample(
            image=np.ascontiguousarray(img.transpose(2, 0, 1)),
            edit_mode=edit_mode,
            image_caption=caption,
            text_caption=text_caption,
            texts=texts,
            languages=[ln.language for ln in lines],
            colors=np.asarray(colors, dtype=np.int16).reshape(-1, 3),
            glyph_lines=glyph_lines,
            positions=positions,
            glyphs=glyphs,
            font_hint=font_hint,
            inv_mask=inv_mask,
            index=int(index),
            faults=tuple(faults),
            polygons=[ln.polygon for ln in lines],
        )


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) keys, shuffled per (seed, epoch): correct with persistent workers."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else range(self.n)
        return iter([(self.epoch, int(i)) for i in order])


def collate_samples(samples: list, max_lines: int = 5) -> Batch:
    """Stack samples into a Batch, padding lines to ``max_lines`` (the reference pads to max_lines)."""
    L = max_lines
    B = len(samples)
    R = samples[0].image.shape[-1]
    pos = np.zeros((B, L, 1, R, R), dtype=bool)
    gl = np.zeros((B, L, 1, *render.GLYPH_LINE_HW), dtype=bool)
    color = np.full((B, L, 3), UNSPECIFIED_COLOR, dtype=np.int16)
    texts, langs = [], []
    for b, s in enumerate(samples):
        n = min(s.n_lines, L)
        pos[b, :n, 0] = s.positions[:n]
        gl[b, :n, 0] = s.glyph_lines[:n]
        color[b, :n] = s.colors[:n]
        texts.append(list(s.texts[:n]) + [" "] * (L - n))
        langs.append(list(s.languages[:n]) + [" "] * (L - n))
    n_lines = torch.tensor([min(s.n_lines, L) for s in samples], dtype=torch.int64)
    return Batch(
        image=torch.from_numpy(np.stack([s.image for s in samples])),
        edit_mode=torch.tensor([s.edit_mode for s in samples], dtype=torch.bool),
        n_lines=n_lines,
        line_valid=torch.arange(L)[None] < n_lines[:, None],
        color=torch.from_numpy(color),
        image_caption=[s.image_caption for s in samples],
        text_caption=[s.text_caption for s in samples],
        text=texts,
        language=langs,
        packed={
            "glyphs": pack_bits(np.stack([s.glyphs for s in samples])[:, None]),
            "font_hint": pack_bits(np.stack([s.font_hint for s in samples])[:, None]),
            "inv_mask": pack_bits(np.stack([s.inv_mask for s in samples])[:, None]),
            "position": pack_bits(pos),
            "glyph_line": pack_bits(gl),
        },
        faults=[s.faults for s in samples],
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
    )


class Collator:
    """Picklable ``collate_fn`` padding to the configured max_lines."""

    def __init__(self, max_lines: int):
        self.max_lines = max_lines

    def __call__(self, samples):
        return collate_samples(samples, self.max_lines)
