"""``anytext2-eval``: generate benchmark images, score them (OCR, CLIPScore, FID), write reports.

Each scoring command prints one JSON object as its last stdout line; ``--report OUT.json`` also
writes the full result (with per-line OCR details) and ``OUT.md`` (a table). ``anytext2-eval report``
merges such result files into one JSON + Markdown report with per-benchmark rows.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..utils.cli import ArgumentParser, add_dataclass_arguments, option
from .benchmark import CANVAS_SIZE, NUM_SAMPLES, BenchmarkError
from .report import benchmark_name, markdown_report, merge_results, write_report


# Options of each subcommand, one dataclass each, through the same mechanism as training (utils.cli).
@dataclass
class GenerateArgs:
    # --- model and benchmark ----------------------------------------------------------------------
    pretrained_model_name_or_path: str | None = option(None, "Saved AnyText2Pipeline folder or Hub id (required).")
    benchmark: str | None = option(None, "AnyText-benchmark JSON, e.g. laion_word/test1k.json (required).")
    output_dir: str | None = option(None, "Folder for the generated images (required).")
    num_samples: int = option(NUM_SAMPLES, "Images per benchmark entry.")
    limit: int | None = option(None, "Only the first N benchmark entries (smoke runs); default: all.", type=int)
    # --- sampling ---------------------------------------------------------------------------------
    resolution: int = option(512, "Image size.")
    num_inference_steps: int = option(20, "Sampler steps.")
    guidance_scale: float = option(7.5, "Classifier-free guidance scale.")
    eta: float = option(0.0, "DDIM eta.")
    seed: int = option(100, "Seed of the first image of each entry.")
    a_prompt: str | None = option(None, "Appended to every caption; default: the reference's.", type=str)
    n_prompt: str | None = option(None, "Negative prompt; default: the reference's.", type=str)
    mixed_precision: str = option(
        "fp16", "Weights dtype on GPUs (CPU runs use float32).", choices=["no", "fp16", "bf16"]
    )
    font_hint: bool = option(True, "Font hint from each line's glyph font (--no-font_hint: none).")
    progress: bool = option(False, "Show progress bars on stderr.")


@dataclass
class ScoreArgs:
    # --- inputs -----------------------------------------------------------------------------------
    images: str | None = option(None, "Folder of images named {img_name stem}_{k}.jpg (or {img_name}) (required).")
    benchmark: str | None = option(None, "AnyText-benchmark JSON, e.g. laion_word/test1k.json (required).")
    num_samples: int = option(NUM_SAMPLES, "Images per benchmark entry (k < N).")
    skip_missing: bool = option(False, "Score what exists instead of failing on a missing image.")
    # --- report -----------------------------------------------------------------------------------
    name: str | None = option(None, "Row label in reports; default: English for laion, Chinese for wukong.")
    report: str | None = option(None, "Write the full result to this .json (and a .md table beside it).")
    device: str = option("cpu", "Torch device.")
    progress: bool = option(False, "Show progress bars on stderr.")


@dataclass
class OCRArgs(ScoreArgs):
    # --- recognizer -------------------------------------------------------------------------------
    ocr_model: str | None = option(None, "Saved PPOCRRecognizer folder; default: convert rapidocr's ONNX.")
    recognizer: str | None = option(
        None, "module:factory returning a callable(list of RGB uint8 crops) -> list[str]; default: PP-OCRv3."
    )
    char_dict: str | None = option(None, "Character dictionary for NED ids; default: the recogniser's.")
    rgb: bool = option(False, "Feed PP-OCR RGB crops (default BGR, as PaddleOCR).")
    canvas_size: int = option(CANVAS_SIZE, "Polygon frame size; 0 = image pixels.")
    language: str | None = option(None, "Label all lines with this language; default: per line.")


@dataclass
class ClipArgs(ScoreArgs):
    # --- CLIP -------------------------------------------------------------------------------------
    clip_model: str = option("openai/clip-vit-base-patch32", "transformers CLIPModel id or folder.")
    batch_size: int = option(64, "Images per CLIP batch.")


@dataclass
class FIDArgs:
    # --- inputs -----------------------------------------------------------------------------------
    images: str | None = option(None, "Folder of generated images (required).")
    reference: str | None = option(None, "Reference image folder or pytorch-fid .npz (mu, sigma) (required).")
    save_reference_stats: str | None = option(None, "Write the reference statistics to this .npz.")
    inception_weights: str | None = option(None, "Local pt_inception-2015-12-05-6726825d.pth; default: download.")
    dims: int = option(2048, "Inception feature size.")
    batch_size: int = option(50, "Images per batch.")
    # --- report -----------------------------------------------------------------------------------
    name: str | None = option(None, "Row label in reports; default: from the image folder name.")
    report: str | None = option(None, "Write the full result to this .json (and a .md table beside it).")
    device: str = option("cpu", "Torch device.")
    progress: bool = option(False, "Show progress bars on stderr.")


SUBCOMMANDS = {
    "generate": (GenerateArgs, "generate the benchmark images with AnyText2Pipeline (Accelerate-aware)"),
    "ocr": (OCRArgs, "Sentence accuracy and NED of the text lines"),
    "clip": (ClipArgs, "CLIPScore of images against their captions"),
    "fid": (FIDArgs, "FID against a reference image folder (or .npz statistics)"),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="anytext2-eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, (cls, help_text) in SUBCOMMANDS.items():
        add_dataclass_arguments(sub.add_parser(name, help=help_text, description=help_text), cls)
    r = sub.add_parser("report", help="merge result JSONs into one JSON + Markdown report")
    r.add_argument("results", nargs="+", help="result .json files written by --report")
    r.add_argument("--out", required=True, help="report path (.json; the .md is written beside it)")
    return parser


def _missing_required(args) -> list[str]:
    cls = SUBCOMMANDS.get(args.command, (None,))[0]
    if cls is None:
        return []
    return [
        f"--{f.name} is required"
        for f in fields(cls)
        if "(required)" in f.metadata.get("help", "") and getattr(args, f.name) is None
    ]


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
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = _missing_required(args)
    if missing:
        parser.error(f"{args.command}: " + "; ".join(missing))
    try:
        result = COMMANDS[args.command](args)
    except BenchmarkError as err:
        print(f"anytext2-eval {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
