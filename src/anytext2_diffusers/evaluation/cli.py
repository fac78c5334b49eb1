"""``anytext2-eval``: generate benchmark images, score them (OCR, CLIPScore, FID), write reports.

Each scoring command prints one JSON object as its last stdout line; ``--report OUT.json`` also
writes the full result (with per-line OCR details) and ``OUT.md`` (a table). ``anytext2-eval report``
merges such result files into one JSON + Markdown report with per-benchmark rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .benchmark import CANVAS_SIZE, NUM_SAMPLES, BenchmarkError
from .report import benchmark_name, markdown_report, merge_results, write_report


def _add_common(p: argparse.ArgumentParser, benchmark: bool = True) -> None:
    p.add_argument("--images", required=True, help="folder of images named {img_name stem}_{k}.jpg (or {img_name})")
    if benchmark:
        p.add_argument("--benchmark", required=True, help="AnyText-benchmark JSON (e.g. laion_word/test1k.json)")
        p.add_argument("--num_samples", type=int, default=NUM_SAMPLES, help="images per benchmark entry (k < N)")
        p.add_argument("--skip_missing", action="store_true", help="score what exists instead of failing")
    p.add_argument("--name", default=None, help="row label in reports (default: English for laion, Chinese for wukong)")
    p.add_argument("--report", default=None, help="write the full result to this .json (and a .md table beside it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytext2-eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate the benchmark images with AnyText2Pipeline (Accelerate-aware)")
    g.add_argument("--pretrained_model_name_or_path", required=True, help="saved AnyText2Pipeline folder or hub id")
    g.add_argument("--benchmark", required=True)
    g.add_argument("--output_dir", required=True)
    g.add_argument("--num_samples", type=int, default=NUM_SAMPLES)
    g.add_argument("--resolution", type=int, default=512)
    g.add_argument("--num_inference_steps", type=int, default=20)
    g.add_argument("--guidance_scale", type=float, default=7.5)
    g.add_argument("--eta", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=100)
    g.add_argument("--a_prompt", default=None, help="appended to every caption (default: the reference's)")
    g.add_argument("--n_prompt", default=None, help="negative prompt (default: the reference's)")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="fp16")
    g.add_argument("--no_font_hint", action="store_true", help="no font hint (default: each line's glyph font)")
    g.add_argument("--limit", type=int, default=None, help="only the first N benchmark entries (smoke runs)")
    g.add_argument("--progress", action="store_true")

    o = sub.add_parser("ocr", help="Sentence accuracy and NED of the text lines")
    _add_common(o)
    o.add_argument("--ocr_model", default=None, help="saved PPOCRRecognizer folder (default: convert rapidocr's ONNX)")
    o.add_argument(
        "--recognizer", default=None, help="module:factory returning a callable(list of RGB uint8 crops) -> list[str]"
    )
    o.add_argument("--char_dict", default=None, help="character dictionary for NED ids (default: the recogniser's)")
    o.add_argument("--rgb", action="store_true", help="feed PP-OCR RGB crops (default BGR, as PaddleOCR)")
    o.add_argument("--canvas_size", type=int, default=CANVAS_SIZE, help="polygon frame size; 0 = image pixels")
    o.add_argument("--language", default=None, help="label all lines with this language instead of per line")

    c = sub.add_parser("clip", help="CLIPScore of images against their captions")
    _add_common(c)
    c.add_argument("--clip_model", default="openai/clip-vit-base-patch32", help="transformers CLIPModel id or folder")
    c.add_argument("--batch_size", type=int, default=64)

    f = sub.add_parser("fid", help="FID against a reference image folder (or .npz statistics)")
    _add_common(f, benchmark=False)
    f.add_argument("--reference", required=True, help="reference image folder or pytorch-fid .npz (mu, sigma)")
    f.add_argument("--save_reference_stats", default=None, help="write the reference statistics to this .npz")
    f.add_argument("--inception_weights", default=None, help="local pt_inception-2015-12-05-6726825d.pth (no download)")
    f.add_argument("--dims", type=int, default=2048)
    f.add_argument("--batch_size", type=int, default=50)

    r = sub.add_parser("report", help="merge result JSONs into one JSON + Markdown report")
    r.add_argument("results", nargs="+", help="result .json files written by --report")
    r.add_argument("--out", required=True, help="report path (.json; the .md is written beside it)")
    return parser


def _load_factory(spec: str):
    module, _, attr = spec.partition(":")
    if not attr:
        raise BenchmarkError(f"--recognizer {spec!r}: expected module:factory")
    return getattr(importlib.import_module(module), attr)()


def _write(result: dict, report: str | None, details: list | None = None) -> None:
    if report is None:
        return
    out = Path(report)
    if out.suffix != ".json":
        out = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    full = dict(result, details=details) if details is not None else result
    out.write_text(json.dumps(full, ensure_ascii=False, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown_report(merge_results([result])), encoding="utf-8")


def run_ocr(args) -> dict:
    from .ocr_eval import PPOCRReader, evaluate_ocr, load_ppocr

    characters = None
    if args.char_dict:
        from ..models.ocr import load_character_list

        characters = load_character_list(args.char_dict)
    if args.recognizer:
        recognizer, label = _load_factory(args.recognizer), args.recognizer
    else:
        model = load_ppocr(args.ocr_model).to(args.device)
        recognizer = PPOCRReader(model, bgr=not args.rgb)
        label = f"PP-OCRv3 ({args.ocr_model or 'converted from rapidocr-onnxruntime ONNX'})"
    summary, scores = evaluate_ocr(
        args.images,
        args.benchmark,
        recognizer,
        characters=characters,
        num_samples=args.num_samples,
        canvas_size=args.canvas_size or None,
        skip_missing=args.skip_missing,
        language=args.language,
        progress=args.progress,
    )
    summary.update(name=args.name or benchmark_name(args.benchmark, args.images), recognizer=label)
    _write(summary, args.report, [asdict(s) for s in scores.lines])
    return summary


def run_clip(args) -> dict:
    from .clip_score import CLIPScorer, evaluate_clip, load_clip

    model, tokenizer = load_clip(args.clip_model, args.device)
    summary = evaluate_clip(
        args.images,
        args.benchmark,
        CLIPScorer(model, tokenizer, args.device, args.batch_size),
        num_samples=args.num_samples,
        skip_missing=args.skip_missing,
        progress=args.progress,
    )
    summary.update(name=args.name or benchmark_name(args.benchmark, args.images), clip_model=args.clip_model)
    _write(summary, args.report)
    return summary


def run_fid(args) -> dict:
    from .fid import evaluate_fid, pytorch_fid_inception

    extractor = pytorch_fid_inception(args.dims, args.inception_weights, args.device)
    summary = evaluate_fid(
        args.images,
        args.reference,
        extractor,
        batch_size=args.batch_size,
        device=args.device,
        save_reference_stats=args.save_reference_stats,
        progress=args.progress,
    )
    summary.update(
        name=args.name or benchmark_name(args.images, args.reference),
        feature_extractor=f"pytorch-fid InceptionV3 ({args.dims})",
    )
    _write(summary, args.report)
    return summary


def run_report(args) -> dict:
    results = []
    for path in args.results:
        try:
            results.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise BenchmarkError(f"cannot read result file {path}: {err}") from None
    return write_report(results, args.out)


def run_generate(args) -> dict:
    from .generate import generate_from_args

    return generate_from_args(args)


COMMANDS = {"generate": run_generate, "ocr": run_ocr, "clip": run_clip, "fid": run_fid, "report": run_report}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except BenchmarkError as err:
        print(f"anytext2-eval {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
