"""Text embedding + dual-caption conditioning vs the reference AnyText2 (parity pack part (a), ``cond.*``).

Needs ANYTEXT2_PARITY_DIR (see shared/parity/README.md). Weights come from the pack's original
state dict through the project's converters; sizes and settings from the pack's files.

Stage-wise, the text embedding reads the reference's font crops and the caption encoder the reference's
line embeddings (pack tolerance); the chained computation from the batch alone is compared end to end at
the tolerance derived from the measured CPU spread (``_parity_helpers``, docs/parity.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from _parity_helpers import assert_close
from safetensors.torch import load_file


def line_major(array: np.ndarray) -> torch.Tensor:
    """The pack's (L, B, H, W, C) per-line arrays -> (B, L, C, H, W) float32 (as the reference's get_input)."""
    return torch.from_numpy(array.astype(np.float32)).permute(1, 0, 4, 2, 3).contiguous()


@pytest.fixture(scope="module")
def run(parity_dir):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from anytext2_diffusers.conversion.original import convert_text_encoder, load_text_encoder_weights, upcast_floats
    from anytext2_diffusers.conversion.text_embedding import text_embedding_model_from_original
    from anytext2_diffusers.models.conditioning import AnyText2CaptionEncoder
    from anytext2_diffusers.models.ocr import recognizer_from_anytext2

    checkpoint = upcast_floats(load_file(parity_dir / "anytext2_tiny_state_dict.safetensors"))
    original_config = yaml.safe_load((parity_dir / "tiny_anytext2.yaml").read_text())
    meta = json.loads((parity_dir / "reference_meta.json").read_text())
    batch = dict(np.load(parity_dir / "batch.npz"))
    captions = json.loads((parity_dir / "batch.json").read_text())

    model = text_embedding_model_from_original(checkpoint, original_config)
    glyph_recognizer = recognizer_from_anytext2(checkpoint, prefix="text_predictor.")
    tokenizer = CLIPTokenizer.from_pretrained(parity_dir / "tiny_clip")
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(parity_dir / "tiny_clip"))
    load_text_encoder_weights(text_encoder, convert_text_encoder(checkpoint))
    encoder = AnyText2CaptionEncoder(tokenizer, text_encoder)

    ref = load_file(parity_dir / "reference_outputs.safetensors")
    max_lines = meta["settings"]["max_lines"]
    glyph_line = line_major(batch["gly_line"])
    assert glyph_line.shape[1] == max_lines
    inputs = dict(
        glyph_line=glyph_line,
        position=line_major(batch["positions"]),
        font_hint=torch.from_numpy(batch["font_hint"].astype(np.float32)).permute(0, 3, 1, 2),
        color=torch.from_numpy(batch["color"]).permute(1, 0, 2),
        n_lines=batch["n_lines"].tolist(),
        glyph_recognizer=glyph_recognizer,
    )
    # The reference's font crops, per sample and line, as the stage-wise input of the font branch.
    crops = [ref[k] for k in sorted((k for k in ref if k.startswith("cond.style_crop.")), key=_index)]
    it = iter(crops)
    ref_crops = [[next(it) for _ in range(int(n))] for n in batch["n_lines"]]
    with torch.no_grad():
        chained = model(**inputs)
        staged = model(**inputs, font_crops=ref_crops)
        cond = encoder(captions["img_caption"], captions["text_caption"], chained.line_embeds, chained.n_lines)
        staged_context = encoder.encode_text_captions(captions["text_caption"], ref["cond.text_embs"], batch["n_lines"])
    return dict(
        model=model, emb=staged, chained=chained, cond=cond, staged_context=staged_context, n_crops=len(crops), ref=ref
    )


def _index(key: str) -> int:
    return int(key.rsplit(".", 1)[1])


def test_config_from_the_pack(run):
    config = run["model"].config
    assert config.token_dim == run["ref"]["cond.text_embs"].shape[1]
    assert (config.add_pos, config.add_style_ocr, config.style_ocr_trainable, config.add_color) == (True,) * 4
    assert config.enable_flag is False


def test_line_embedding_parts(run):
    """Stage-wise: the font branch reads the reference's crops; everything else reads the batch."""
    emb, ref = run["emb"], run["ref"]
    assert_close("cond.recog_neck", emb.glyph_neck, ref["cond.recog_neck"])
    assert_close("cond.style_neck", emb.font_neck, ref["cond.style_neck"])
    assert_close("cond.em_glyph", emb.glyph_embeds, ref["cond.em_glyph"])
    assert_close("cond.em_pos", emb.position_embeds, ref["cond.em_pos"])
    assert_close("cond.em_style", emb.font_embeds, ref["cond.em_style"])
    assert_close("cond.em_color", emb.color_embeds, ref["cond.em_color"])
    assert_close("cond.text_embs", emb.line_embeds, ref["cond.text_embs"])


def test_line_embedding_end_to_end(run):
    """Our crops of the batch's font hints, through our font recognizer, into the line tokens."""
    emb, ref = run["chained"], run["ref"]
    assert len(emb.font_crops) == run["n_crops"]
    for k, crop in enumerate(emb.font_crops):
        assert_close(f"cond.style_crop.{k}", crop, ref[f"cond.style_crop.{k}"])
    assert_close("cond.style_neck", emb.font_neck, ref["cond.style_neck"], end_to_end=True)
    assert_close("cond.em_style", emb.font_embeds, ref["cond.em_style"], end_to_end=True)
    assert_close("cond.text_embs", emb.line_embeds, ref["cond.text_embs"], end_to_end=True)


def test_caption_ids_and_contexts(run):
    cond, ref = run["cond"], run["ref"]
    assert torch.equal(cond.text_input_ids, ref["cond.text_input_ids"])
    assert torch.equal(cond.image_input_ids, ref["cond.img_input_ids"])
    assert_close("cond.text_context", run["staged_context"], ref["cond.text_context"])
    assert_close("cond.text_context", cond.text_context, ref["cond.text_context"], end_to_end=True)
    assert_close("cond.img_context", cond.image_context, ref["cond.img_context"])
