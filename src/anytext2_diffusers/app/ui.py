"""The Gradio page: widgets -> :mod:`.inference` requests -> gallery. Needs the ``app`` extra (``gradio``).

Two endpoints, ``/generate`` and ``/edit`` (also callable with ``gradio_client``); one model per process,
requests queue one at a time (the pipeline is not re-entrant).
"""

from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from ..pipelines import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT
from . import inference
from .inference import MAX_LINES, NO_FONT, AppError, Request

logger = logging.getLogger(__name__)

BRUSH_COLOR = "#404040"
CANVAS_GREY = 235


def blank_canvas(width: int, height: int) -> dict:
    """An empty drawing canvas of the image's size (the editor's value)."""
    return {"background": np.full((int(height), int(width), 3), CANVAS_GREY, np.uint8), "layers": [], "composite": None}


def _brush(size: int) -> gr.Brush:
    return gr.Brush(default_size=size, colors=[BRUSH_COLOR], default_color=BRUSH_COLOR, color_mode="fixed")


def build_demo(pipe, source: str = "", size: int = 512, steps: int = 20, guidance: float = 7.5) -> gr.Blocks:
    """The app's ``gr.Blocks`` for ``pipe`` (already loaded); ``size``/``steps``/``guidance`` are the page's
    defaults."""

    def run(req: Request, progress) -> tuple:
        try:
            result = inference.run(pipe, req, lambda i, n: progress((i, n), desc="Sampling", unit="steps"))
        except AppError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # shown as a message, never as a traceback; the log keeps the details
            logger.exception("request failed")
            raise gr.Error(f"Generation failed: {type(e).__name__}: {e}. The server log has the details.") from None
        for w in result.warnings:
            gr.Warning(w)
        captions = [f"seed {result.seed}, image {i + 1}" for i in range(len(result.images))]
        first = result.images[0]
        info = f"Seed {result.seed}; {len(result.images)} image(s) of {first.width}x{first.height}."
        return list(zip(result.images, captions)), result.layout, info

    def generate(
        prompt, texts, canvas, width, height,
        font_1, font_2, font_3, font_4, font_5, color_1, color_2, color_3, color_4, color_5, uploaded_font,
        negative_prompt, added_prompt, steps, guidance_scale, seed, num_images, strength, attnx_scale, sort_order,
        progress=gr.Progress(),  # noqa: B008 - Gradio's idiom: it injects the tracker here
    ):  # fmt: skip
        req = Request(
            mode="generate", prompt=prompt, texts=texts, regions=inference.editor_mask(canvas, "The canvas"),
            width=width, height=height, fonts=[font_1, font_2, font_3, font_4, font_5],
            colors=[color_1, color_2, color_3, color_4, color_5], uploaded_font=uploaded_font,
            negative_prompt=negative_prompt, added_prompt=added_prompt, num_inference_steps=steps,
            guidance_scale=guidance_scale, seed=seed, num_images=num_images, strength=strength,
            attnx_scale=attnx_scale, sort_priority=sort_order,
        )  # fmt: skip
        return run(req, progress)

    def edit(
        prompt, texts, image, keep_unmasked_area,
        font_1, font_2, font_3, font_4, font_5, color_1, color_2, color_3, color_4, color_5, uploaded_font,
        negative_prompt, added_prompt, steps, guidance_scale, seed, num_images, strength, attnx_scale, sort_order,
        progress=gr.Progress(),  # noqa: B008 - Gradio's idiom: it injects the tracker here
    ):  # fmt: skip
        req = Request(
            mode="edit", prompt=prompt, texts=texts, regions=inference.editor_mask(image, "The painted regions"),
            image=inference.editor_image(image), keep_unmasked_area=keep_unmasked_area,
            fonts=[font_1, font_2, font_3, font_4, font_5], colors=[color_1, color_2, color_3, color_4, color_5],
            uploaded_font=uploaded_font, negative_prompt=negative_prompt, added_prompt=added_prompt,
            num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed, num_images=num_images,
            strength=strength, attnx_scale=attnx_scale, sort_priority=sort_order,
        )  # fmt: skip
        return run(req, progress)

    brush = _brush(max(4, size // 12))  # the reference demo: 40 px on 512
    with gr.Blocks(title="AnyText2") as demo:
        gr.Markdown(
            "## AnyText2: write text into images\n"
            f"Model: `{source}`. Draw one box or stroke per text line, type the lines (one per row of the text"
            " box), pick a font and colour per line, and generate; or upload an image, paint over the text to"
            " replace and edit. Lines pair with regions in reading order (top to bottom, then left to right);"
            " the layout image shows which line went where."
        )
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", placeholder="a shop sign on a brick wall", elem_id="prompt")
                texts = gr.Textbox(
                    label=f"Text lines (one per row, at most {MAX_LINES})",
                    placeholder="OPEN\nCoffee & Tea",
                    lines=3,
                    elem_id="texts",
                )
                with gr.Tabs():
                    with gr.Tab("Generate", id="generate"):
                        canvas = gr.ImageEditor(
                            value=blank_canvas(size, size),
                            type="numpy",
                            image_mode="RGBA",
                            sources=(),
                            transforms=(),
                            layers=False,
                            brush=brush,
                            canvas_size=(size, size),
                            format="png",
                            label="Draw where each line goes",
                            elem_id="canvas",
                        )
                        with gr.Row():
                            width = gr.Slider(64, 1024, value=size, step=64, label="Width", elem_id="width")
                            height = gr.Slider(64, 1024, value=size, step=64, label="Height", elem_id="height")
                        generate_button = gr.Button("Generate", variant="primary", elem_id="generate_button")
                    with gr.Tab("Edit", id="edit"):
                        image = gr.ImageMask(
                            type="numpy",
                            image_mode="RGBA",
                            sources=("upload", "clipboard"),
                            transforms=(),
                            layers=False,
                            brush=brush,
                            format="png",
                            label="Upload an image, then paint over the text to replace",
                            elem_id="edit_image",
                        )
                        keep = gr.Checkbox(
                            value=False,
                            label="Keep the rest of the image (re-impose it outside the painted regions every step)",
                        )
                        edit_button = gr.Button("Edit", variant="primary", elem_id="edit_button")
                with gr.Accordion("Font and colour per line", open=False):
                    gr.Markdown("Black or white means no colour condition; 'No font' means no font condition.")
                    fonts, colors = [], []
                    for i in range(MAX_LINES):
                        with gr.Row():
                            fonts.append(
                                gr.Dropdown(inference.font_choices(), value=NO_FONT, label=f"Line {i + 1} font")
                            )
                            colors.append(gr.ColorPicker(value="#000000", label=f"Line {i + 1} colour"))
                    uploaded_font = gr.File(
                        label="Your font (.ttf / .otf), used by lines set to 'Uploaded font'",
                        file_types=[".ttf", ".otf", ".ttc"],
                        type="filepath",
                    )
                with gr.Accordion("Parameters", open=False):
                    with gr.Row():
                        steps_in = gr.Slider(1, 100, value=steps, step=1, label="Steps")
                        guidance = gr.Slider(1.0, 30.0, value=guidance, step=0.1, label="Guidance scale")
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                        num_images = gr.Slider(1, 8, value=1, step=1, label="Number of images")
                    with gr.Row():
                        strength = gr.Slider(0.0, 2.0, value=1.0, step=0.01, label="WriteNet strength")
                        attnx = gr.Slider(0.0, 2.0, value=1.0, step=0.01, label="AttnX strength")
                    sort_order = gr.Radio(
                        [("rows first (top to bottom)", "vertical"), ("columns first (left to right)", "horizontal")],
                        value="vertical",
                        label="Reading order of the regions",
                    )
                    added = gr.Textbox(value=DEFAULT_ADDED_PROMPT, label="Added prompt")
                    negative = gr.Textbox(value=DEFAULT_NEGATIVE_PROMPT, label="Negative prompt")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Results", columns=2, format="png", elem_id="gallery")
                layout = gr.Image(label="Which line went where", type="pil", format="png", elem_id="layout")
                info = gr.Markdown(elem_id="info")

        common = [*fonts, *colors, uploaded_font, negative, added, steps_in, guidance, seed, num_images]
        common += [strength, attnx, sort_order]
        outputs = [gallery, layout, info]
        generate_button.click(generate, [prompt, texts, canvas, width, height, *common], outputs, api_name="generate")
        edit_button.click(edit, [prompt, texts, image, keep, *common], outputs, api_name="edit")
        for slider in (width, height):  # a new size starts a new canvas (strokes would not fit it)
            slider.input(
                lambda w, h: gr.ImageEditor(value=blank_canvas(w, h), canvas_size=(int(w), int(h))),
                [width, height],
                canvas,
                queue=False,  # not behind a running generation
                api_visibility="private",
            )
    return demo
