"""PP-OCRv3 for AnyText2: text recognition (the network, real weights, line cropping, CTC decode) and text
detection (DBNet in onnxruntime). The OCR losses of training live in ``training/losses.py``."""

from .convert import (
    OCRConversionError,
    convert_onnx,
    default_onnx_path,
    load_anytext2_ocr_state_dict,
    read_onnx_characters,
    read_state_dict_file,
    recognizer_from_anytext2,
)
from .crop import (
    crop_line_by_mask,
    crop_line_by_polygon,
    crop_lines,
    min_area_box_from_mask,
    min_area_box_from_polygon,
    rectify_box,
    umeyama_similarity,
)
from .decoding import ctc_greedy_decode, ctc_greedy_decode_with_scores, ctc_greedy_ids
from .detection import (
    DBPostProcessConfig,
    FragmentMergeConfig,
    PPOCRDetector,
    boxes_from_probability_map,
    default_det_onnx_path,
    merge_line_fragments,
    same_line,
)
from .modeling_ppocr import PPOCRRecognizer, PPOCRRecognizerOutput
from .neck_cache import FrozenNeckCache
from .preprocess import (
    RecognitionResult,
    paddle_resize_norm,
    prepare_crops,
    recognize_crops,
    resize_norm_crop,
    rotate_if_vertical,
    to_chw_tensor,
)
from .second_look import SecondLookConfig, horizontal_window, longer_line, look_again, steepness
from .vocab import (
    BLANK_INDEX,
    build_character_list,
    load_character_list,
    read_dictionary,
    text_to_ids,
    texts_to_labels,
)

__all__ = [
    "BLANK_INDEX",
    "OCRConversionError",
    "PPOCRRecognizer",
    "PPOCRRecognizerOutput",
    "RecognitionResult",
    "SecondLookConfig",
    "build_character_list",
    "convert_onnx",
    "crop_line_by_mask",
    "crop_line_by_polygon",
    "crop_lines",
    "DBPostProcessConfig",
    "FragmentMergeConfig",
    "FrozenNeckCache",
    "PPOCRDetector",
    "boxes_from_probability_map",
    "ctc_greedy_decode",
    "ctc_greedy_decode_with_scores",
    "default_det_onnx_path",
    "ctc_greedy_ids",
    "default_onnx_path",
    "load_anytext2_ocr_state_dict",
    "load_character_list",
    "longer_line",
    "look_again",
    "horizontal_window",
    "merge_line_fragments",
    "min_area_box_from_mask",
    "min_area_box_from_polygon",
    "paddle_resize_norm",
    "prepare_crops",
    "read_dictionary",
    "read_onnx_characters",
    "read_state_dict_file",
    "recognize_crops",
    "recognizer_from_anytext2",
    "rectify_box",
    "resize_norm_crop",
    "rotate_if_vertical",
    "same_line",
    "steepness",
    "text_to_ids",
    "texts_to_labels",
    "to_chw_tensor",
    "umeyama_similarity",
]
