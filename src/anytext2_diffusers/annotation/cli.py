"""``anytext2-annotate``: folders of images -> AnyWord ``data_v1.2b.json`` (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="anytext2-annotate",
        description="Detect and read the text lines of your images (PP-OCRv3) into AnyWord-format JSON.",
    )
    ap.add_argument("--images", nargs="+", required=True, metavar="DIR", help="image folder(s), searched recursively")
    ap.add_argument("--output", required=True, metavar="FILE", help="the AnyWord JSON to write (data_v1.2b.json)")
    ap.add_argument(
        "--captions",
        default=None,
        help="captions.jsonl ({file_name, caption} per line) or imagefolder metadata.csv/.jsonl "
        "(default: a metadata.jsonl/.csv or captions.jsonl inside a single --images folder, else empty captions)",
    )
    ap.add_argument("--min_score", type=float, default=0.6, help="drop lines read with lower confidence")
    ap.add_argument(
        "--min_chars", type=int, default=2, help="drop lines read with fewer characters (1: keep single characters)"
    )
    ap.add_argument("--min_box_px", type=float, default=8, help="drop lines whose box is thinner (pixels)")
    ap.add_argument("--max_lines", type=int, default=20, help="keep at most this many (largest) lines per image")
    ap.add_argument(
        "--languages", default="auto", choices=["auto", "Chinese", "Latin"], help="auto: Chinese if CJK, else Latin"
    )
    det = ap.add_argument_group(
        "text detector", "defaults: RapidOCR's settings; PaddleOCR's are 960, max, 0.6, 1.5, --no-det_use_dilation"
    )
    det.add_argument("--det_limit_side_len", type=int, default=736, help="detector input size (--det_limit_type)")
    det.add_argument(
        "--det_limit_type",
        default="min",
        choices=["max", "min", "resize_long"],
        help="min: enlarge the shorter side to at least --det_limit_side_len; max: shrink the longer side to at "
        "most it; resize_long: scale the longer side to it",
    )
    det.add_argument("--det_box_thresh", type=float, default=0.5, help="mean text probability to keep a box")
    det.add_argument("--det_unclip_ratio", type=float, default=1.6, help="box growth (area * ratio / perimeter)")
    det.add_argument(
        "--det_use_dilation", action=argparse.BooleanOptionalAction, default=True, help="dilate the text map 2x2"
    )
    det.add_argument(
        "--det_merge_fragments",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="join boxes that are pieces of one line (collinear, same height, touching) before reading",
    )
    det.add_argument(
        "--det_both_orders",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="detect on the pixel-wise maximum of the text maps for BGR and RGB input (two detector passes)",
    )
    det.add_argument(
        "--det_second_look",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="detect again around each steep box (20-70 degrees) turned horizontal; replace it by the longer "
        "line found there",
    )
    ap.add_argument(
        "--rec_margins",
        type=float,
        nargs="*",
        default=[0.1],
        metavar="M",
        help="also read each box grown by M x its height on every side and keep the most confident reading "
        "(none given: read the box only)",
    )
    ap.add_argument(
        "--channel_order",
        default="bgr",
        choices=["bgr", "rgb"],
        help="channel order of detector input and crops: bgr (PaddleOCR's, the models' training order) or rgb "
        "(RapidOCR 1.2.3's)",
    )
    ap.add_argument(
        "--rec_input",
        default="torch",
        choices=["paddle", "torch"],
        help="reader input: torch (the training's resize) or paddle (PaddleOCR's inference resize of the uint8 crop)",
    )
    ap.add_argument("--batch_size", type=int, default=16, help="images per detection batch and crops per read")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--num_workers", type=int, default=2, help="DataLoader workers decoding images")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --output")
    ap.add_argument("--save_every", type=int, default=64, help="write progress atomically every N images")
    return ap


def main(argv=None) -> int:
    from .annotator import AnnotateConfig
    from .run import AnnotateRun, annotate_folders

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = AnnotateConfig(
            min_score=args.min_score,
            min_chars=args.min_chars,
            min_box_px=args.min_box_px,
            max_lines=args.max_lines,
            languages=args.languages,
            batch_size=args.batch_size,
            device=args.device,
            det_limit_side_len=args.det_limit_side_len,
            det_limit_type=args.det_limit_type,
            det_box_thresh=args.det_box_thresh,
            det_unclip_ratio=args.det_unclip_ratio,
            det_use_dilation=args.det_use_dilation,
            det_merge_fragments=args.det_merge_fragments,
            det_bgr=args.channel_order == "bgr",
            rec_bgr=args.channel_order == "bgr",
            rec_input=args.rec_input,
            det_both_orders=args.det_both_orders,
            det_second_look=args.det_second_look,
            rec_margins=tuple(args.rec_margins),
        )
        run = AnnotateRun(
            images=args.images,
            output=args.output,
            captions=args.captions,
            config=config,
            num_workers=args.num_workers,
            resume=args.resume,
            save_every=args.save_every,
        )
        summary = annotate_folders(run)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"anytext2-annotate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
