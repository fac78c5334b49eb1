"""``anytext2-app``: load the model once, build the page, serve it with a request queue."""

from __future__ import annotations

import argparse
import logging

from .model import DTYPES

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anytext2-app",
        description="AnyText2 in the browser: draw where each text line goes, type it, generate or edit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="AnyText2 pipeline folder or Hub id; default: ./anytext2-demo (the README's demo output) if it"
        " exists, else the tiny random pipeline (starts offline, draws noise)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights' dtype")
    parser.add_argument("--server_name", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--server_port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--share", action=argparse.BooleanOptionalAction, default=False, help="also open a public Gradio share link"
    )
    parser.add_argument(
        "--max_queue_size", type=int, default=20, help="requests waiting beyond this are refused with a message"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import gradio as gr  # noqa: F401 - fail early with the install hint
    except ImportError:
        logger.error("the app needs Gradio: pip install 'anytext2-diffusers[app]'")
        return 1
    from .model import default_size, load_pipeline
    from .ui import build_demo

    pipe, source = load_pipeline(args.pretrained_model_name_or_path, args.device, args.dtype)
    demo = build_demo(pipe, source=source, size=default_size(pipe))
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue_size)
    demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share)
    return 0
