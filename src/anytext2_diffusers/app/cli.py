"""``anytext2-app``: load the model once, build the page, serve it with a request queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..utils.cli import ArgumentParser, add_dataclass_arguments, from_namespace, option
from .model import DTYPES

logger = logging.getLogger(__name__)


@dataclass
class AppConfig:
    # --- model ------------------------------------------------------------------------------------
    pretrained_model_name_or_path: str | None = option(
        None,
        "AnyText2 pipeline folder or Hub id; default: ./anytext2-demo (the README's demo output) if it exists,"
        " else the demo model shipped with the package (tiny, 128 px, offline).",
        type=str,
    )
    device: str = option("cpu", "torch device, e.g. cpu or cuda.")
    dtype: str = option("fp32", "Weights' dtype.", choices=sorted(DTYPES))
    # --- server -----------------------------------------------------------------------------------
    server_name: str = option("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    server_port: int = option(7860, "Port to listen on.")
    share: bool = option(False, "Also open a public Gradio share link.")
    max_queue_size: int = option(20, "Requests waiting beyond this are refused with a message.")


def parse_args(argv=None) -> AppConfig:
    """The project's one CLI convention (utils.cli): grouped --help, shown defaults, no abbreviations."""
    parser = ArgumentParser(
        prog="anytext2-app",
        description="AnyText2 in the browser: draw where each text line goes, type it, generate or edit.",
    )
    add_dataclass_arguments(parser, AppConfig)
    return from_namespace(AppConfig, parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import gradio as gr  # noqa: F401 - fail early with the install hint
    except ImportError:
        logger.error("the app needs Gradio: pip install 'anytext2-diffusers[app]'")
        return 1
    from .model import default_guidance, default_size, load_pipeline
    from .ui import build_demo

    pipe, source = load_pipeline(args.pretrained_model_name_or_path, args.device, args.dtype)
    demo = build_demo(pipe, source=source, size=default_size(pipe), guidance=default_guidance(pipe))
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue_size)
    demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share)
    return 0
