"""AnyText2 evaluation: OCR Sentence Accuracy / NED, CLIPScore, FID, benchmark generation and reports.

Follows the reference ``eval/`` protocol; see ``docs/evaluation.md``. Heavy pieces (OCR model, CLIP,
Inception, the pipeline) load lazily, so importing this package is cheap.
"""

from .benchmark import (
    MAX_CHARS,
    MAX_LINES,
    NUM_SAMPLES,
    BenchmarkError,
    BenchmarkItem,
    BenchmarkLine,
    load_benchmark,
    sample_paths,
    sample_stem,
)
from .clip_score import CLIPScorer, clip_preprocess, clip_score_from_features, evaluate_clip, load_clip
from .fid import evaluate_fid, feature_statistics, fid_from_features, frechet_distance, pytorch_fid_inception
from .metrics import CharIds, OCRScores, levenshtein, normalized_edit_similarity, sentence_accuracy
from .ocr_eval import PPOCRReader, crop_item_lines, evaluate_ocr, infer_language, load_ppocr
from .report import PUBLISHED_ANYTEXT2, markdown_report, merge_results, write_report

__all__ = [
    "MAX_CHARS",
    "MAX_LINES",
    "NUM_SAMPLES",
    "PUBLISHED_ANYTEXT2",
    "BenchmarkError",
    "BenchmarkItem",
    "BenchmarkLine",
    "CLIPScorer",
    "CharIds",
    "OCRScores",
    "PPOCRReader",
    "clip_preprocess",
    "clip_score_from_features",
    "crop_item_lines",
    "evaluate_clip",
    "evaluate_fid",
    "evaluate_ocr",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "infer_language",
    "levenshtein",
    "load_benchmark",
    "load_clip",
    "load_ppocr",
    "markdown_report",
    "merge_results",
    "normalized_edit_similarity",
    "pytorch_fid_inception",
    "sample_paths",
    "sample_stem",
    "sentence_accuracy",
    "write_report",
]
