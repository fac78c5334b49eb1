"""OCR parity with the reference AnyText2 (tiny parity pack): preprocessing, recognizer outputs,
line crops, OCR perceptual and CTC losses. Needs ANYTEXT2_PARITY_DIR (see shared/parity/README.md).

Each stage is fed the reference's own input (the pack stores the crops) and compared at the pack's
tolerance; our chained crop -> recognizer computation is compared as well, at the tolerance
``_parity_helpers`` derives from the measured CPU spread (docs/parity.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _parity_helpers import assert_close, assert_scalar_close

from anytext2_diffusers.models.ocr import (
    PPOCRRecognizer,
    crop_line_by_mask,
    crop_lines,
    ctc_loss_per_line,
    language_weight,
    load_anytext2_ocr_state_dict,
    load_character_list,
    mean_per_sample,
    ocr_line_losses_from_crops,
    ocr_perceptual_loss_per_line,
    recognize_crops,
)


@pytest.fixture(scope="module")
def pack(parity_dir):
    from safetensors.torch import load_file

    root = parity_dir
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(root / "anytext2_tiny_state_dict.safetensors").items()
    }
    meta = json.loads((root / "reference_meta.json").read_text())
    batch_np = np.load(root / "batch.npz")
    return {
        "state": state,
        "ref": load_file(root / "reference_outputs.safetensors"),
        "meta": meta,
        "batch": {k: batch_np[k] for k in batch_np.files},
        "batch_json": json.loads((root / "batch.json").read_text()),
    }


def _recognizer(pack, prefix):
    head = pack["state"][f"{prefix}head.fc.bias"]
    chars = load_character_list()
    model = PPOCRRecognizer(num_classes=head.shape[0], characters=chars if len(chars) == head.shape[0] else None)
    return load_anytext2_ocr_state_dict(model, pack["state"], prefix=prefix).eval()


@pytest.fixture(scope="module")
def text_predictor(pack):
    return _recognizer(pack, "text_predictor.")


@pytest.fixture(scope="module")
def font_predictor(pack):
    return _recognizer(pack, "embedding_manager.font_predictor.")


def _numbered(ref, stem):
    keys = sorted((k for k in ref if k.startswith(stem + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [ref[k] for k in keys]


def _lines(batch, key):
    """Per-sample lists of per-line (H, W, C) arrays from the pack's line-major (L, B, H, W, C) layout,
    cast to float32 as the reference's get_input does."""
    arr = batch[key].astype(np.float32)
    return [[arr[j, i] for j in range(arr.shape[0])] for i in range(arr.shape[1])]


@torch.no_grad()
def test_recognizer_preprocessing_and_outputs(pack, text_predictor, font_predictor):
    ref = pack["ref"]
    raw = _numbered(ref, "ocr.raw_crop")
    assert len(raw) == len(pack["meta"]["ocr_test_lines"])
    result = recognize_crops(text_predictor, raw)
    assert result.order.tolist() == ref["ocr.input_order"].tolist()
    assert_close("ocr.input", result.pixel_values, ref["ocr.input"])
    assert_close("ocr.pred_imglist.neck", result.neck, ref["ocr.pred_imglist.neck"])
    out = text_predictor(ref["ocr.input"])
    assert_close("ocr.text_predictor.ctc", out.logits, ref["ocr.text_predictor.ctc"])
    assert_close("ocr.text_predictor.neck", out.neck, ref["ocr.text_predictor.neck"])
    assert_close("ocr.font_predictor.neck", font_predictor(ref["ocr.input"]).neck, ref["ocr.font_predictor.neck"])


def _original_crops(pack):
    batch = pack["batch"]
    images = (torch.from_numpy(batch["img"]).permute(0, 3, 1, 2) + 1.0) / 2.0 * 255
    return crop_lines(images, _lines(batch, "positions"), batch["n_lines"])


def test_loss_crops_of_the_original_image(pack):
    crops = _original_crops(pack)
    refs = _numbered(pack["ref"], "loss.crop_orig")
    assert len(crops) == len(refs) == int(pack["batch"]["n_lines"].sum())
    for k, (ours, theirs) in enumerate(zip(crops, refs)):
        assert_close(f"loss.crop_orig.{k}", ours, theirs)


@torch.no_grad()
def test_ocr_necks_and_losses(pack, text_predictor):
    """Necks of [decoded crops..., original crops...] in one call, then AnyText2's OCR and CTC losses.

    Stage-wise: the reference's own crops of both kinds. End to end: our crops of the original image."""
    ref, meta, batch = pack["ref"], pack["meta"], pack["batch"]
    settings = meta["settings"]
    decoded = _numbered(ref, "loss.crop_decoded")  # produced from the VAE-decoded pred_x0 by the reference
    original = _numbered(ref, "loss.crop_orig")
    out = recognize_crops(text_predictor, decoded + original)
    n = len(decoded)
    assert_close("loss.ocr_neck", out.neck, ref["loss.ocr_neck"])
    chained = recognize_crops(text_predictor, decoded + _original_crops(pack))
    assert_close("loss.ocr_neck", chained.neck, ref["loss.ocr_neck"], end_to_end=True)

    texts = pack["batch_json"]["texts"]
    languages = pack["batch_json"]["language"]
    n_lines = [int(x) for x in batch["n_lines"]]
    line_texts = [texts[j][i] for i in range(len(n_lines)) for j in range(n_lines[i])]
    weights = [
        language_weight(languages[j][i], settings["latin_weight"])
        for i in range(len(n_lines))
        for j in range(n_lines[i])
    ]
    step_weight = pack["state"]["alphas_cumprod"][torch.tensor(meta["loss_t"])]
    if not settings["with_step_weight"]:
        step_weight = torch.ones_like(step_weight)

    perceptual = ocr_perceptual_loss_per_line(out.neck[:n], out.neck[n:], weights)
    loss_ocr = (mean_per_sample(perceptual, n_lines) * settings["loss_alpha"] * step_weight).mean()
    ctc = ctc_loss_per_line(out.logits[:n], line_texts, text_predictor.characters, weights)
    loss_ctc = (mean_per_sample(ctc, n_lines) * settings["loss_beta"] * step_weight).mean()
    # The one-call helper computes the same per-line values.
    line_languages = [languages[j][i] for i in range(len(n_lines)) for j in range(n_lines[i])]
    helper = ocr_line_losses_from_crops(
        text_predictor, decoded, original, line_texts, line_languages, settings["latin_weight"]
    )
    assert torch.allclose(helper.perceptual, perceptual) and torch.allclose(helper.ctc, ctc)
    for name, ours in (("loss.ocr", loss_ocr), ("loss.ctc", loss_ctc)):
        assert_scalar_close(name, ours.item(), meta["scalars"][name])


@torch.no_grad()
def test_embedding_inputs_glyph_lines_and_style_crops(pack, text_predictor, font_predictor):
    """What the text embedding feeds the recognizers: glyph lines (x255, 3 channels) and font-hint crops.
    The font recognizer is compared on the reference's crops (stage-wise) and on ours (end to end)."""
    ref, batch = pack["ref"], pack["batch"]
    n_lines = batch["n_lines"]
    glyph_lines = [
        torch.from_numpy(line).permute(2, 0, 1).repeat(3, 1, 1) * 255
        for i, lines in enumerate(_lines(batch, "gly_line"))
        for line in lines[: n_lines[i]]
    ]
    assert_close("cond.recog_neck", recognize_crops(text_predictor, glyph_lines).neck, ref["cond.recog_neck"])

    font_hint = torch.from_numpy(batch["font_hint"].astype(np.float32)).permute(0, 3, 1, 2)
    positions = _lines(batch, "positions")
    style = [
        crop_line_by_mask((font_hint[i] * 255).repeat(3, 1, 1), positions[i][j])
        for i in range(len(n_lines))
        for j in range(n_lines[i])
    ]
    for k, crop in enumerate(style):
        assert_close(f"cond.style_crop.{k}", crop, ref[f"cond.style_crop.{k}"])
    ref_crops = _numbered(ref, "cond.style_crop")
    assert_close("cond.style_neck", recognize_crops(font_predictor, ref_crops).neck, ref["cond.style_neck"])
    chained = recognize_crops(font_predictor, style).neck
    assert_close("cond.style_neck", chained, ref["cond.style_neck"], end_to_end=True)
