"""anytext2-annotate: speed (images/s, peak RSS) and accuracy against known lines, beside RapidOCR.

    python benchmarks/bench_annotate.py --speed_images 32 [--device cuda]
    python benchmarks/bench_annotate.py --accuracy_images 40 [--det_limit_type min --det_limit_side_len 736]
    python benchmarks/bench_annotate.py --accuracy_images 100 --seed 5000 --speed_images 0 --errors \
        --rapidocr_cache rapidocr.json     # every wrong box, missed line and misread, both pipelines

Accuracy sets: ``anytext2-make-demo-data`` images (512 px, 0-7 lines, Latin and Chinese, some lines
turned up to 35 degrees, vertical Chinese) and ``make_rotated_line_data`` images (every horizontal
line turned up to 60 degrees, 30 % vertical Chinese); true polygons and texts are known. Each
annotated line is matched one-to-one to a true line at polygon IoU >= 0.5; recall, precision and the
share of matched lines read exactly are printed for our pipeline (CLI defaults unless overridden) and
for RapidOCR's own PP-OCRv3 det(+cls)+rec pipeline with its defaults (when rapidocr_onnxruntime
imports). Speed: ``annotate_folders`` over demo images, end to end (decoding workers, detection,
crops, recognition, JSON), after a warm-up run on a quarter of the images (at least one full batch);
peak RSS after the warm-up and after the full run shows whether memory grows with the number of images.
``--runtime_comparison`` times the recognizer ONNX in onnxruntime against our torch port (the
measurement behind running the detector in onnxruntime). The last line printed is one JSON object.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from anytext2_diffusers.annotation import (  # noqa: E402
    AnnotateConfig,
    AnnotateRun,
    Annotator,
    LineAccuracy,
    annotate_folders,
    decode_image,
    line_errors,
    match_lines,
)
from anytext2_diffusers.data.synth import make_demo_data, make_rotated_line_data  # noqa: E402


def _truth(json_path):
    with open(json_path, encoding="utf-8") as f:
        d = json.load(f)
    root = os.path.join(os.path.dirname(json_path), d["data_root"])
    return [(os.path.join(root, r["img_name"]), r["annotations"]) for r in d["data_list"]]


def _score(predictions, items, errors_label=None):
    """Counts over a set; with ``errors_label`` each wrong box, missed line and misread is printed."""
    acc = LineAccuracy()
    for (path, truth), predicted in zip(items, predictions):
        acc.add(match_lines(predicted, truth))
        for e in line_errors(predicted, truth) if errors_label else ():
            print(errors_label, os.path.basename(path), json.dumps(e, ensure_ascii=False), flush=True)
    return acc


def ours_accuracy(annotator, items, errors_label=None):
    predictions = [annotator([decode_image(path)[0]])[0].annotations for path, _ in items]
    return _score(predictions, items, errors_label)


def rapidocr_accuracy(items, errors_label=None, cache=None):
    """RapidOCR's own pipeline with its defaults; ``cache``: a JSON file of its results by set folder
    (which names the seed) and image (they depend only on the images)."""
    cached = {}
    if cache and os.path.exists(cache):
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
    keys = [os.path.relpath(path, os.path.dirname(os.path.dirname(os.path.dirname(path)))) for path, _ in items]
    if not all(k in cached for k in keys):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as err:  # its GUI-free dependencies (pyclipper, shapely, six) may be missing
            return None, f"rapidocr_onnxruntime does not import: {err}"
        engine = RapidOCR()
        for key, (path, _) in zip(keys, items):
            if key not in cached:
                result, _ = engine(path)
                cached[key] = [
                    {"polygon": [[float(v) for v in pt] for pt in box], "text": text, "score": float(score)}
                    for box, text, score in (result or [])
                ]
        if cache:
            with open(cache, "w", encoding="utf-8") as f:
                json.dump(cached, f, ensure_ascii=False)
    return _score([cached[k] for k in keys], items, errors_label), None


def runtime_comparison(recognizer, repeats=5):
    """The recognizer (same PP-OCRv3 family as the detector) in onnxruntime vs our torch port, one
    batch of 16 crops at 48 x 320, best of ``repeats``: the evidence for running the detector in
    onnxruntime rather than porting it to torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from anytext2_diffusers.models.ocr import default_onnx_path

    x = np.random.default_rng(0).uniform(-1, 1, (16, 3, 48, 320)).astype(np.float32)
    session = ort.InferenceSession(str(default_onnx_path()), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    timings = {}
    for label, fn in (
        ("onnxruntime_ms", lambda: session.run(None, {name: x})),
        ("torch_ms", lambda: recognizer(torch.from_numpy(x))),
    ):
        best = float("inf")
        with torch.no_grad():
            fn()
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
        timings[label] = round(best * 1000, 1)
    return timings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accuracy_images", type=int, default=40, help="images per accuracy set (0: skip)")
    ap.add_argument("--speed_images", type=int, default=32, help="images timed end to end (0: skip)")
    ap.add_argument("--seed", type=int, default=1000, help="seed of the accuracy sets (the test uses others)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--det_limit_side_len", type=int, default=None)
    ap.add_argument("--det_limit_type", default=None)
    ap.add_argument("--paddleocr_detector", action="store_true", help="PaddleOCR's 960 / max / 0.6 / 1.5 / no dilation")
    ap.add_argument("--no_rapidocr", action="store_true")
    ap.add_argument("--rapidocr_cache", default=None, help="JSON file keeping RapidOCR's results between runs")
    ap.add_argument("--errors", action="store_true", help="print every wrong box, missed line and misread")
    ap.add_argument("--min_chars", type=int, default=None, help="override the one-character rule (1: keep them)")
    ap.add_argument("--no_merge_fragments", action="store_true", help="read detector boxes as they come")
    ap.add_argument("--channel_order", choices=["bgr", "rgb"], default=None, help="detector input and crops")
    ap.add_argument("--rec_input", choices=["paddle", "torch"], default=None, help="reader input preprocessing")
    ap.add_argument(
        "--det_both_orders", action=argparse.BooleanOptionalAction, default=None, help="max of BGR and RGB maps"
    )
    ap.add_argument(
        "--det_second_look", action=argparse.BooleanOptionalAction, default=None, help="second look at steep boxes"
    )
    ap.add_argument("--rec_margins", type=float, nargs="*", default=None, help="reader margin views (none: box only)")
    ap.add_argument("--runtime_comparison", action="store_true", help="recognizer: onnxruntime vs torch")
    a = ap.parse_args()
    overrides = {"det_limit_side_len": a.det_limit_side_len, "det_limit_type": a.det_limit_type}
    overrides = {k: v for k, v in overrides.items() if v}
    if a.min_chars:
        overrides["min_chars"] = a.min_chars
    if a.channel_order:
        overrides["det_bgr"] = overrides["rec_bgr"] = a.channel_order == "bgr"
    if a.rec_input:
        overrides["rec_input"] = a.rec_input
    if a.det_both_orders is not None:
        overrides["det_both_orders"] = a.det_both_orders
    if a.det_second_look is not None:
        overrides["det_second_look"] = a.det_second_look
    if a.rec_margins is not None:
        overrides["rec_margins"] = tuple(a.rec_margins)
    if a.no_merge_fragments:
        overrides["det_merge_fragments"] = False
    if a.paddleocr_detector:
        overrides.update(det_limit_side_len=960, det_limit_type="max", det_box_thresh=0.6, det_unclip_ratio=1.5)
        overrides["det_use_dilation"] = False
    config = AnnotateConfig(device=a.device, batch_size=a.batch_size, **overrides)
    result = {"device": a.device, "config": vars(config).copy()}
    tmp = tempfile.mkdtemp(prefix="bench_annotate_")
    try:
        t = time.perf_counter()
        annotator = Annotator(config)
        result["load_s"] = round(time.perf_counter() - t, 2)
        if a.runtime_comparison:
            result["recognizer_batch16"] = runtime_comparison(annotator.recognizer)
            print("recognizer, batch of 16:", result["recognizer_batch16"], flush=True)
        if a.accuracy_images:
            n, seed = a.accuracy_images, a.seed
            sets = {
                "demo": _truth(make_demo_data(os.path.join(tmp, f"demo{seed}"), n, seed=seed)),
                "rotated": _truth(make_rotated_line_data(os.path.join(tmp, f"rot{seed}"), n, seed=seed)),
            }
            for name, items in sets.items():
                row = {"ours": ours_accuracy(annotator, items, f"ours {name}" if a.errors else None).as_dict()}
                if not a.no_rapidocr:
                    acc, why = rapidocr_accuracy(items, f"rapidocr {name}" if a.errors else None, a.rapidocr_cache)
                    row["rapidocr"] = acc.as_dict() if acc else why
                result[f"accuracy_{name}"] = row
                print(name, json.dumps(row), flush=True)
        if a.speed_images:
            img_dir = os.path.dirname(make_demo_data(os.path.join(tmp, "speed"), a.speed_images, seed=1))
            img_dir = os.path.join(img_dir, "imgs")
            out = os.path.join(tmp, "speed_out")
            os.makedirs(out)
            warm_dir = os.path.join(tmp, "warm_imgs")
            os.makedirs(warm_dir)
            for name in sorted(os.listdir(img_dir))[: max(a.batch_size, a.speed_images // 4)]:
                shutil.copy(os.path.join(img_dir, name), warm_dir)
            warm = AnnotateRun([warm_dir], os.path.join(out, "warm.json"), config=config, num_workers=a.num_workers)
            annotate_folders(warm, annotator)
            result["peak_rss_mb_after_warmup"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            run = AnnotateRun([img_dir], os.path.join(out, "data.json"), config=config, num_workers=a.num_workers)
            t = time.perf_counter()
            summary = annotate_folders(run, annotator)
            dt = time.perf_counter() - t
            result["images"] = summary["images"]
            result["lines"] = summary["lines"]
            result["seconds"] = round(dt, 2)
            result["images_per_s"] = round(summary["images"] / dt, 3)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
