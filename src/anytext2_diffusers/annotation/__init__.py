"""Own images -> AnyWord annotations: PP-OCRv3 detection + recognition, captions, resumable runs."""

from .annotator import AnnotateConfig, Annotator, ImageAnnotation, line_language, read_crops, widen_box
from .captions import CaptionFileError, read_captions
from .images import decode_image, find_images
from .metrics import LineAccuracy, line_errors, match_lines, polygon_iou
from .run import AnnotateRun, annotate_folders, write_json_atomic

__all__ = [
    "AnnotateConfig",
    "AnnotateRun",
    "Annotator",
    "CaptionFileError",
    "ImageAnnotation",
    "LineAccuracy",
    "annotate_folders",
    "decode_image",
    "find_images",
    "line_language",
    "line_errors",
    "match_lines",
    "polygon_iou",
    "read_captions",
    "read_crops",
    "widen_box",
    "write_json_atomic",
]
