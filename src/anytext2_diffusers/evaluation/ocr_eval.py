"""OCR scoring of generated images: crop each annotated line, recognise it, compare with the benchmark text.

Protocol (AnyText2 ``eval/eval_dgocr.py``): for every benchmark image and each of its ``num_samples``
generations, every selected line is cut out by the min-area rectangle of its polygon (the polygon is
filled into a position mask first, as the reference does), warped upright; lines taller than 1.2x
their width are turned 90 degrees; the crop is recognised and scored with Sentence Accuracy and NED.
Means are over all lines of all samples.

The recogniser is any callable ``list of HxWx3 uint8 RGB arrays -> list of str``. The default is our
PP-OCRv3 (real weights converted from rapidocr's ONNX). The published AnyText2 numbers were scored
with DuGuang's ConvNeXt-Tiny recogniser (ModelScope), so scores are only comparable between runs that
use the same recogniser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .benchmark import CANVAS_SIZE, NUM_SAMPLES, BenchmarkError, BenchmarkItem, load_benchmark, sample_paths
from .metrics import CharIds, LineScore, OCRScores, normalized_edit_similarity, sentence_accuracy

Recognizer = Callable[[list[np.ndarray]], list[str]]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def infer_language(text: str) -> str:
    """Group for a line without a ``language`` field: "Chinese" if it has a CJK ideograph, else "Latin"."""
    return "Chinese" if _CJK.search(text) else "Latin"


class PPOCRReader:
    """Recogniser adapter around ``PPOCRRecognizer.read``.

    Crops arrive as RGB; they are handed to PP-OCR in BGR because PaddleOCR trained and runs its models
    on OpenCV (BGR) images, and the reference evaluation also fed its recogniser OpenCV BGR crops.
    """

    def __init__(self, model, bgr: bool = True, batch_size: int = 32, dynamic_width: bool = False):
        self.model = model
        self.bgr = bgr
        self.batch_size = batch_size
        self.dynamic_width = dynamic_width
        self.characters = model.characters

    def __call__(self, crops: Sequence[np.ndarray]) -> list[str]:
        crops = [np.ascontiguousarray(c[..., ::-1]) if self.bgr else c for c in crops]
        return self.model.read(crops, batch_size=self.batch_size, dynamic_width=self.dynamic_width)


def load_ppocr(ocr_model: str | Path | None = None):
    """A PP-OCRv3 ``PPOCRRecognizer`` from a saved folder (``anytext2-convert-ocr`` output), else converted
    on the fly from the ONNX file inside rapidocr-onnxruntime (about a second: faster than loading a
    saved copy, so nothing is cached)."""
    from ..models.ocr import PPOCRRecognizer, convert_onnx

    if ocr_model is None:
        return convert_onnx()
    path = Path(ocr_model)
    if not (path / "config.json").is_file():
        raise BenchmarkError(f"--ocr_model {path}: not a saved PPOCRRecognizer folder (no config.json)")
    return PPOCRRecognizer.from_pretrained(str(path)).eval()


def line_mask(polygon: np.ndarray, height: int, width: int, canvas_size: int | None = CANVAS_SIZE) -> np.ndarray:
    """The line's position mask at the image size: the polygon (scaled from the benchmark canvas when the
    image has another size) filled with 255, as the reference draws its ``positions``."""
    poly = np.asarray(polygon, dtype=np.float64)
    if canvas_size:
        poly = poly * np.array([width / canvas_size, height / canvas_size])
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 255)
    return mask


def crop_item_lines(image: np.ndarray, item: BenchmarkItem, canvas_size: int | None = CANVAS_SIZE) -> list[np.ndarray]:
    """Upright HxWx3 uint8 crops of the item's lines from an HxWx3 uint8 RGB image."""
    from ..models.ocr import crop_line_by_mask

    tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float()
    h, w = image.shape[:2]
    crops = []
    for line in item.lines:
        crop = crop_line_by_mask(tensor, line_mask(line.polygon, h, w, canvas_size))
        crops.append(crop.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return crops


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"cannot read image {path}: {err}") from None


def evaluate_ocr(
    images_dir: str | Path,
    benchmark: str | Path | Sequence[BenchmarkItem],
    recognizer: Recognizer | None = None,
    characters: Sequence[str] | None = None,
    num_samples: int = NUM_SAMPLES,
    canvas_size: int | None = CANVAS_SIZE,
    skip_missing: bool = False,
    language: str | None = None,
    batch_lines: int = 256,
    progress: bool = False,
) -> tuple[dict, OCRScores]:
    """Score every line of every generated image; returns ``(summary, per-line scores)``.

    ``characters``: the class table used for NED ids (default: the recogniser's ``characters`` if it
    has one, else PP-OCR's ``ppocr_keys_v1`` table). ``language`` labels every line (default: the
    annotation's ``language`` field, else ``infer_language``). Missing images raise ``BenchmarkError``
    unless ``skip_missing``, which counts and lists them instead.
    """
    items = load_benchmark(benchmark) if isinstance(benchmark, (str, Path)) else list(benchmark)
    if recognizer is None:
        recognizer = PPOCRReader(load_ppocr())
    if characters is None:
        characters = getattr(recognizer, "characters", None)
    char_ids = CharIds(characters)

    jobs = []  # (item, path) in benchmark order
    missing = []
    for item in items:
        if not item.lines:
            continue  # the reference scores a dummy ' ' line here; an image without text has nothing to read
        for path in sample_paths(images_dir, item, num_samples):
            (jobs if path.is_file() else missing).append((item, path))
    if missing and not skip_missing:
        shown = ", ".join(str(p) for _, p in missing[:5])
        raise BenchmarkError(
            f"{len(missing)} image(s) missing in {images_dir} (e.g. {shown}); generate them or pass --skip_missing"
        )

    scores = OCRScores()
    pending: list[tuple[BenchmarkItem, Path, int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        preds = list(recognizer([c for *_, c in pending]))
        if len(preds) != len(pending):
            raise RuntimeError(f"the recogniser returned {len(preds)} strings for {len(pending)} crops")
        for (item, path, j, _), pred in zip(pending, preds):
            gt = item.lines[j].text
            lang = language or item.lines[j].language or infer_language(gt)
            ned = normalized_edit_similarity(pred, gt, char_ids)
            scores.add(LineScore(path.name, j, lang, gt, pred, sentence_accuracy(pred, gt), ned))
        pending.clear()

    iterator = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc="ocr", unit="img")
    for item, path in iterator:
        for j, crop in enumerate(crop_item_lines(read_rgb(path), item, canvas_size)):
            pending.append((item, path, j, crop))
        if len(pending) >= batch_lines:
            flush()
    flush()

    summary = scores.summary()
    summary.update(
        metric="ocr",
        images=str(images_dir),
        images_scored=len(jobs),
        missing_images=len(missing),
        skipped_items_without_lines=sum(1 for it in items if not it.lines),
    )
    if isinstance(benchmark, (str, Path)):
        summary["benchmark"] = str(benchmark)
    return summary, scores
