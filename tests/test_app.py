"""The Gradio app: request checks, and a live server on a loopback port driven through gradio_client."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError as ClientAppError
from PIL import Image

from anytext2_diffusers.app import inference, model
from anytext2_diffusers.app.inference import AppError, Request
from anytext2_diffusers.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def two_boxes(h=128, w=192) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[16:48, 16 : w - 16] = True  # line 1 (upper)
    m[80:112, 32 : w - 32] = True  # line 2 (lower)
    return m


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# request checks (no server)
# ------------------------------------------------------------------------------------------------
def test_lines_one_per_row_blank_rows_inside_are_refused():
    assert inference.parse_lines("\n Hello \nWorld\n\n") == ["Hello", "World"]
    with pytest.raises(AppError, match="Type the text"):
        inference.parse_lines("  \n ")
    with pytest.raises(AppError, match="Text line 2 is empty"):
        inference.parse_lines("Hello\n\nWorld")


def test_colours_from_the_picker():
    assert inference.parse_color("#ff8000") == (255, 128, 0)
    assert inference.parse_color("rgba(10, 20.4, 30, 1)") == (10, 20, 30)
    assert inference.parse_color("#000000") is None and inference.parse_color("#ffffff") is None  # reference: unset
    with pytest.raises(AppError, match="not a colour"):
        inference.parse_color("#12")


def test_font_lacking_a_glyph_is_named():
    assert inference.resolve_fonts(["Hi", "中文"], ["NotoSerif-Regular", "No font"], None)[1] is None
    with pytest.raises(AppError, match=r"Line 1 .*'NotoSerif-Regular' has no glyph for '中'"):
        inference.resolve_fonts(["中文"], ["NotoSerif-Regular"], None)
    with pytest.raises(AppError, match="no font file was uploaded"):
        inference.resolve_fonts(["Hi"], ["Uploaded font"], None)


def test_uploaded_file_that_is_not_a_font(tmp_path):
    bad = tmp_path / "font.ttf"
    bad.write_bytes(b"not a font")
    with pytest.raises(AppError, match="'font.ttf' is not a font"):
        inference.resolve_fonts(["Hi"], ["Uploaded font"], str(bad))


def test_editor_mask_is_the_painted_alpha():
    layer = np.zeros((8, 8, 4), np.uint8)
    assert inference.editor_mask({"background": None, "layers": [layer], "composite": None}, "x") is None
    layer[2:4, 1:5, 3] = 255
    mask = inference.editor_mask({"background": None, "layers": [layer], "composite": None}, "x")
    assert mask.sum() == 8 and mask[2:4, 1:5].all()


def test_prepare_pairs_lines_in_reading_order_and_checks_the_request():
    req = Request(mode="generate", prompt="p", texts="Top\nBottom", regions=two_boxes(), width=192, height=128)
    kwargs, layout, warnings = inference.prepare(req)
    assert kwargs["texts"] == ["Top", "Bottom"] and (kwargs["height"], kwargs["width"]) == (128, 192)
    assert layout.size == (192, 128) and warnings == []
    # line 1's colour (LAYOUT_COLORS[0]) tints the upper box, line 2's the lower one
    arr = np.asarray(layout).astype(int)
    assert arr[40, 100].argmax() == 0 and arr[100, 96].argmax() == 1

    with pytest.raises(AppError, match="3 text lines but 2 drawn regions"):
        inference.prepare(Request(mode="generate", prompt="", texts="a\nb\nc", regions=two_boxes()))
    with pytest.raises(AppError, match="nothing is drawn"):
        inference.prepare(Request(mode="generate", prompt="", texts="a", regions=None))
    with pytest.raises(AppError, match="multiples of 64"):
        inference.prepare(Request(mode="generate", prompt="", texts="a", regions=two_boxes(), width=100))
    small = np.zeros((40, 300, 3), np.uint8)
    with pytest.raises(AppError, match="too small to edit"):
        inference.prepare(Request(mode="edit", prompt="", texts="a", regions=two_boxes(40, 300), image=small))
    _, _, warnings = inference.prepare(Request(mode="generate", prompt="", texts="a", regions=two_boxes()))
    assert warnings == [
        "2 regions for 1 lines: region 2 gets no text (kept in the position hint, as in the reference)."
    ]  # noqa: E501


def test_run_reports_progress_every_step_and_the_seed(pipe):
    seen = []
    box = np.zeros((64, 64), bool)
    box[20:44, 8:56] = True
    req = Request(mode="generate", prompt="p", texts="ab", regions=box, width=64, height=64)
    req.num_inference_steps, req.guidance_scale = 3, 1.0
    result = inference.run(pipe, req, lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert 0 <= result.seed < inference.MAX_SEED and result.images[0].size == (64, 64)


# ------------------------------------------------------------------------------------------------
# model loading and the command line
# ------------------------------------------------------------------------------------------------
def test_demo_folder_name_is_the_demo_presets():
    from anytext2_diffusers.training.config import DEMO_PRESET

    assert model.DEMO_OUTPUT_DIR == DEMO_PRESET["output_dir"]


def test_default_model_is_the_demo_output_when_present_else_the_shipped_demo_model(tmp_path, monkeypatch):
    from anytext2_diffusers.demo_model import LATENT_CHANNELS, PREDICTION_TYPE
    from anytext2_diffusers.testing import demo_model_dir

    monkeypatch.chdir(tmp_path)
    assert model.default_model_source() is None
    pipe, source = model.load_pipeline(None)
    assert demo_model_dir() in source and model.default_size(pipe) == 128 and model.default_guidance(pipe) == 3.0
    # the shipped model, not the random tiny stack (4 latent channels, epsilon)
    assert pipe.unet.config.in_channels == LATENT_CHANNELS and pipe.scheduler.config.prediction_type == PREDICTION_TYPE
    tiny_pipeline(0).save_pretrained(tmp_path / model.DEMO_OUTPUT_DIR)
    assert model.default_model_source() == model.DEMO_OUTPUT_DIR
    pipe, source = model.load_pipeline(None)
    assert source == model.DEMO_OUTPUT_DIR and model.default_size(pipe) == 128


def test_cli_help_lists_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "anytext2_diffusers.app", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")},
        check=True,
    ).stdout
    for option in ("--pretrained_model_name_or_path", "--device", "--dtype", "--server_name", "--server_port"):
        assert option in out
    assert "--share, --no-share" in out and "(default: 7860)" in out


def test_cli_follows_the_one_convention():
    from anytext2_diffusers.app.cli import parse_args

    config = parse_args(["--server_port", "7001", "--no-share"])
    assert (config.server_port, config.share, config.dtype) == (7001, False, "fp32")
    with pytest.raises(SystemExit):  # no abbreviations: --server_p is not --server_port
        parse_args(["--server_p", "7001"])


# ------------------------------------------------------------------------------------------------
# a live server
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(pipe):
    from anytext2_diffusers.app.ui import build_demo

    demo = build_demo(pipe, source="tiny", size=128, steps=2)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def editor_value(tmp_path, background: np.ndarray, mask: np.ndarray) -> dict:
    """What the browser sends for an ImageEditor: the background and the painted layer (RGBA) as files."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (64, 64, 64, 255)
    Image.fromarray(background).save(tmp_path / "background.png")
    Image.fromarray(layer).save(tmp_path / "layer.png")
    return {
        "background": handle_file(str(tmp_path / "background.png")),
        "layers": [handle_file(str(tmp_path / "layer.png"))],
        "composite": None,
        "id": None,
    }


def generate(client, tmp_path, texts="Hello\nWorld", w=192, h=128, **kw):
    canvas = editor_value(tmp_path, np.full((h, w, 3), 235, np.uint8), two_boxes(h, w))
    args = dict(prompt="a sign", texts=texts, canvas=canvas, width=w, height=h, steps=2, seed=7, uploaded_font=None)
    return client.predict(**{**args, **kw}, api_name="/generate")


def test_generate_two_regions_two_texts_gives_the_requested_size(server, pipe, tmp_path):
    gallery, layout, info = generate(server, tmp_path, num_images=2)
    assert len(gallery) == 2
    images = [np.asarray(Image.open(g["image"]).convert("RGB")) for g in gallery]
    assert all(im.shape == (128, 192, 3) for im in images) and "Seed 7" in info
    assert Image.open(layout).size == (192, 128)
    # the page's request is exactly this pipeline call (PNG is lossless, so the uint8 pixels match)
    direct = pipe(
        prompt="a sign",
        texts=["Hello", "World"],
        positions=two_boxes(),
        height=128,
        width=192,
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(7),
    ).images
    for got, want in zip(images, direct):
        np.testing.assert_array_equal(got, np.asarray(want))


def test_sampling_progress_reaches_the_client(server, tmp_path):
    # 20 steps take over a second even on an idle machine; the client keeps the latest progress message
    canvas = editor_value(tmp_path, np.full((128, 192, 3), 235, np.uint8), two_boxes())
    job = server.submit(
        prompt="a", texts="A\nB", canvas=canvas, width=192, height=128, steps=20, seed=1, uploaded_font=None,
        api_name="/generate",
    )  # fmt: skip
    seen = set()
    while not job.done():
        for unit in job.status().progress_data or []:
            seen.add((unit.index, unit.length, unit.desc))
        time.sleep(0.01)
    job.result()
    assert seen, "no progress message arrived during sampling"
    assert {length for _, length, _ in seen} == {20} and {desc for _, _, desc in seen} == {"Sampling"}
    assert all(1 <= index <= 20 for index, _, _ in seen)


def test_edit_gives_an_image(server, tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[40:80, 16:112] = True
    value = editor_value(tmp_path, photo, mask)
    gallery, layout, info = server.predict(
        prompt="a sign", texts="Sale", image=value, keep_unmasked_area=True, steps=2, seed=3,
        uploaded_font=None, api_name="/edit",
    )  # fmt: skip
    assert Image.open(gallery[0]["image"]).size == (128, 128) and "Seed 3" in info


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(texts="one\ntwo\nthree"), "3 text lines but 2 drawn regions"),
        (dict(texts="   "), "Type the text to write"),
        (dict(texts="中文\nok", font_1="NotoSerif-Regular"), "has no glyph for '中'"),
        (dict(w=100), "multiples of 64"),
    ],
    ids=["more-lines-than-regions", "empty-text", "font-lacks-glyph", "bad-size"],
)
def test_bad_request_shows_a_message_and_the_server_answers_the_next_one(server, tmp_path, kwargs, message):
    with pytest.raises(ClientAppError, match=message) as err:
        generate(server, tmp_path, **kwargs)
    assert "Traceback" not in str(err.value)
    gallery, _, _ = generate(server, tmp_path)
    assert len(gallery) == 1


def test_edit_of_a_too_small_image_is_refused_with_a_message(server, tmp_path):
    value = editor_value(tmp_path, np.zeros((48, 200, 3), np.uint8), np.ones((48, 200), bool))
    with pytest.raises(ClientAppError, match="too small to edit"):
        server.predict(prompt="", texts="a", image=value, uploaded_font=None, api_name="/edit")
