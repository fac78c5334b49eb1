"""AnyText2TextEmbeddingModel: per-line parts, ordering, padding, switches, gradients, save/load.

Small batches on purpose: a full-size PP-OCRv3 recognizer costs ~0.1 s per crop on 2 CPU threads.
"""

from __future__ import annotations

import pytest
import torch

from anytext2_diffusers.conversion.text_embedding import (
    text_embedding_config_from_original,
    text_embedding_model_from_original,
    text_embedding_state_dict_from_original,
)
from anytext2_diffusers.models.ocr import PPOCRRecognizer, crop_line_by_mask, recognize_crops
from anytext2_diffusers.models.text_embedding import AnyText2TextEmbeddingModel, split_lines
from anytext2_diffusers.testing import tiny_recognizer

SIZE = 64  # position / font-hint resolution for the tests (the model takes any)
DIM = 32  # tiny text encoder width


def calibrated_recognizer(seed: int) -> PPOCRRecognizer:
    return tiny_recognizer(seed)


def make_batch(n_lines=(2, 1), max_lines=2, seed=0):
    """Lines as boxes in distinct places; font hint strokes inside them; the last line of sample 0 has no colour."""
    g = torch.Generator().manual_seed(seed)
    batch = len(n_lines)
    glyph_line = (torch.rand(batch, max_lines, 1, 80, 512, generator=g) > 0.7).float()
    position = torch.zeros(batch, max_lines, 1, SIZE, SIZE, dtype=torch.bool)
    font_hint = torch.zeros(batch, 1, SIZE, SIZE)
    for b in range(batch):
        for j in range(max_lines):
            top = 4 + 20 * j + 3 * b
            left = 4 + 5 * j
            width = 30 + 6 * j + 4 * b
            position[b, j, 0, top : top + 12, left : left + width] = True
            strokes = torch.rand(12, width, generator=g) > 0.5
            font_hint[b, 0, top : top + 12, left : left + width] = strokes.float()
    color = torch.randint(0, 256, (batch, max_lines, 3), generator=g)
    color[0, max_lines - 1] = 500
    return dict(glyph_line=glyph_line, position=position, font_hint=font_hint, color=color, n_lines=list(n_lines))


def randomize_projections(model: AnyText2TextEmbeddingModel, seed: int = 0) -> AnyText2TextEmbeddingModel:
    """Replace the zero-initialised linears (and identity LayerNorms) by random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for seq in (model.proj, model.style_proj, model.color_proj):
            for p in seq.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.02))
    return model


@pytest.fixture(scope="module")
def glyph_recognizer():
    return calibrated_recognizer(1).requires_grad_(False)


@pytest.fixture(scope="module")
def font_recognizer():
    return calibrated_recognizer(2)


def new_model(font_recognizer=None, **kwargs) -> AnyText2TextEmbeddingModel:
    torch.manual_seed(3)
    model = AnyText2TextEmbeddingModel(token_dim=DIM, **kwargs)
    if font_recognizer is not None and model.font_predictor is not None:
        model.font_predictor.load_state_dict(font_recognizer.state_dict())
    return model.eval()


def test_fresh_model_adds_only_the_position_part(glyph_recognizer, font_recognizer):
    """Zero-initialised Linear -> LayerNorm gives exactly 0, so a fresh model's tokens are its position
    embeddings: adding the module cannot disturb a pretrained model at step 0."""
    model = new_model(font_recognizer)
    with torch.no_grad():
        out = model(**make_batch(), glyph_recognizer=glyph_recognizer)
    assert out.line_embeds.shape == (3, DIM)
    for part in (out.glyph_embeds, out.font_embeds, out.color_embeds):
        assert torch.equal(part, torch.zeros_like(part))
    assert torch.equal(out.line_embeds, out.position_embeds)
    assert out.position_embeds.abs().max() > 0


def test_parts_order_and_padding(glyph_recognizer, font_recognizer):
    model = randomize_projections(new_model(font_recognizer))
    inputs = make_batch(n_lines=(2, 1), max_lines=2)
    with torch.no_grad():
        out = model(**inputs, glyph_recognizer=glyph_recognizer)
    index = [(0, 0), (0, 1), (1, 0)]  # sample-major valid lines; (1, 1) is padding
    assert out.n_lines.tolist() == [2, 1]
    total = out.glyph_embeds + out.position_embeds + out.font_embeds + out.color_embeds
    torch.testing.assert_close(out.line_embeds, total, rtol=0, atol=0)

    with torch.no_grad():
        lines = [inputs["glyph_line"][b, j].expand(3, -1, -1) * 255 for b, j in index]
        neck = recognize_crops(glyph_recognizer, lines).neck
        torch.testing.assert_close(out.glyph_neck, neck)
        torch.testing.assert_close(out.glyph_embeds, model.proj(neck.flatten(1)))
        for k, (b, j) in enumerate(index):
            mask = inputs["position"][b, j : j + 1].float()
            torch.testing.assert_close(out.position_embeds[k], model.position_encoder(mask)[0])
            crop = crop_line_by_mask(inputs["font_hint"][b].expand(3, -1, -1) * 255, inputs["position"][b, j, 0])
            torch.testing.assert_close(out.font_crops[k], crop)
            torch.testing.assert_close(out.color_embeds[k], model.color_proj(inputs["color"][b, j].float()))
        font_neck = recognize_crops(model.font_predictor, out.font_crops).neck
        torch.testing.assert_close(out.font_neck, font_neck)
        torch.testing.assert_close(out.font_embeds, model.style_proj(font_neck.flatten(1)))
    # the lines differ from each other (the checks above are not comparing constants)
    assert torch.cdist(out.line_embeds, out.line_embeds).triu(1)[0, 1:].min() > 1e-3

    # padding lines are ignored whatever they hold
    garbage = dict(inputs)
    garbage["glyph_line"] = inputs["glyph_line"].clone()
    garbage["glyph_line"][1, 1] = 1.0
    garbage["color"] = inputs["color"].clone()
    garbage["color"][1, 1] = 7
    with torch.no_grad():
        again = model(**garbage, glyph_recognizer=glyph_recognizer)
    torch.testing.assert_close(again.line_embeds, out.line_embeds)
    assert [t.shape[0] for t in split_lines(out.line_embeds, out.n_lines)] == [2, 1]


def test_enable_flag_zeroes_missing_font_and_colour(glyph_recognizer, font_recognizer):
    inputs = make_batch(n_lines=(2,), max_lines=2)
    inputs["position"][0, 0] = False
    inputs["position"][0, 0, 0, 40:52, 10:40] = True  # line 0 of sample 0 now lies outside every font stroke
    outs = {}
    for flag in (False, True):
        model = randomize_projections(new_model(font_recognizer, enable_flag=flag))
        with torch.no_grad():
            outs[flag] = model(**inputs, glyph_recognizer=glyph_recognizer)
    assert outs[True].font_crops[0].abs().max() == 0 and outs[True].font_crops[1].abs().max() > 0
    # reference setting (False): the empty crop and the 500s still produce embeddings
    assert outs[False].font_embeds[0].abs().max() > 0 and outs[False].color_embeds[1].abs().max() > 0
    assert torch.equal(outs[True].font_embeds[0], torch.zeros(DIM))
    assert torch.equal(outs[True].color_embeds[1], torch.zeros(DIM))
    torch.testing.assert_close(outs[True].font_embeds[1], outs[False].font_embeds[1])
    torch.testing.assert_close(outs[True].color_embeds[0], outs[False].color_embeds[0])


def test_gradients_reach_trainable_parts_only(glyph_recognizer, font_recognizer):
    model = randomize_projections(new_model(font_recognizer)).train()
    assert model.font_predictor.training  # reference behaviour: font recognizer follows the model's mode
    glyph_recognizer.train()  # must be forced to eval for the call, and restored afterwards
    try:
        out = model(**make_batch(n_lines=(1, 1)), glyph_recognizer=glyph_recognizer)
        assert glyph_recognizer.training
    finally:
        glyph_recognizer.eval()
    (out.line_embeds * torch.linspace(-1, 1, DIM)).sum().backward()
    for name in ("proj.0.weight", "proj.1.weight", "position_encoder.conv1.weight", "style_proj.0.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().max() > 0, name
    assert model.color_proj[0].weight.grad.abs().max() > 0
    font_grads = [p.grad for n, p in model.font_predictor.named_parameters() if not n.startswith("head.")]
    assert all(g is not None for g in font_grads)
    assert model.font_predictor.backbone.conv1._conv.weight.grad.abs().max() > 0
    assert model.font_predictor.neck.encoder.conv1x1.conv.weight.grad.abs().max() > 0
    # the CTC head is unused by the font branch: frozen so that DDP sees no unused trainable parameters
    assert all(not p.requires_grad and p.grad is None for p in model.font_predictor.head.parameters())
    assert all(p.grad is None for p in glyph_recognizer.parameters())


def test_glyph_recognizer_runs_in_eval_mode(glyph_recognizer, font_recognizer):
    model = new_model(font_recognizer)
    inputs = make_batch(n_lines=(1,), max_lines=1)
    with torch.no_grad():
        ref = model(**inputs, glyph_recognizer=glyph_recognizer).glyph_neck
        glyph_recognizer.train()
        try:
            again = model(**inputs, glyph_recognizer=glyph_recognizer).glyph_neck
        finally:
            glyph_recognizer.eval()
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


def test_font_ocr_train_mode_switch(font_recognizer):
    model = new_model(font_recognizer, font_ocr_train_mode=False).train()
    assert model.training and model.proj.training and not model.font_predictor.training
    model.eval().train()
    assert not model.font_predictor.training
    assert new_model(font_recognizer).train().font_predictor.training


def test_frozen_font_branch_uses_glyph_recognizer(glyph_recognizer):
    model = randomize_projections(new_model(style_ocr_trainable=False))
    assert model.font_predictor is None and not any(k.startswith("font_predictor.") for k in model.state_dict())
    with torch.no_grad():
        out = model(**make_batch(n_lines=(1,), max_lines=1), glyph_recognizer=glyph_recognizer)
        torch.testing.assert_close(out.font_neck, recognize_crops(glyph_recognizer, out.font_crops).neck)


def test_font_crop_override(glyph_recognizer, font_recognizer):
    model = new_model(font_recognizer)
    mimic = torch.full((3, 20, 90), 200.0)
    with torch.no_grad():
        out = model(**make_batch(n_lines=(2,)), glyph_recognizer=glyph_recognizer, font_crops=[[None, mimic]])
    assert torch.equal(out.font_crops[1], mimic) and out.font_crops[0].shape != mimic.shape


def test_disabled_branches_and_no_lines(glyph_recognizer):
    model = new_model(add_pos=False, add_style_ocr=False, add_color=False)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"proj"}
    inputs = make_batch(n_lines=(0, 1))
    with torch.no_grad():
        out = model(inputs["glyph_line"], None, None, None, inputs["n_lines"], glyph_recognizer=glyph_recognizer)
        assert out.line_embeds.shape == (1, DIM) and out.position_embeds is None and out.color_embeds is None
        empty = model(inputs["glyph_line"], None, None, None, [0, 0], glyph_recognizer=glyph_recognizer)
    assert empty.line_embeds.shape == (0, DIM)


def test_input_errors(glyph_recognizer):
    model = new_model(add_style_ocr=False)
    inputs = make_batch()
    with pytest.raises(ValueError, match="glyph_recognizer is required"):
        model(**inputs)
    with pytest.raises(ValueError, match="0..1"):
        model(**{**inputs, "glyph_line": inputs["glyph_line"] * 255}, glyph_recognizer=glyph_recognizer)
    with pytest.raises(ValueError, match="n_lines"):
        model(**{**inputs, "n_lines": [3, 1]}, glyph_recognizer=glyph_recognizer)
    with pytest.raises(ValueError, match="color"):
        model(**{**inputs, "color": inputs["color"][:, :1]}, glyph_recognizer=glyph_recognizer)


def test_save_pretrained_round_trip(tmp_path, glyph_recognizer, font_recognizer):
    model = randomize_projections(new_model(font_recognizer, enable_flag=True))
    model.save_pretrained(tmp_path)
    loaded = AnyText2TextEmbeddingModel.from_pretrained(tmp_path).eval()
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert any(k.startswith("font_predictor.") for k in saved)
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert not any(p.requires_grad for p in loaded.font_predictor.head.parameters())
    inputs = make_batch(n_lines=(1,), max_lines=1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs, glyph_recognizer=glyph_recognizer).line_embeds,
            model(**inputs, glyph_recognizer=glyph_recognizer).line_embeds,
        )


def test_from_text_encoder_copies_font_recognizer(tiny, font_recognizer):
    model = AnyText2TextEmbeddingModel.from_text_encoder(tiny["text_encoder"], font_recognizer=font_recognizer)
    assert model.config.token_dim == tiny["text_encoder"].config.hidden_size
    assert "characters" not in model.config.font_recognizer_config
    for key, value in font_recognizer.state_dict().items():
        assert torch.equal(model.font_predictor.state_dict()[key], value), key


def test_original_checkpoint_conversion_is_a_prefix_strip():
    model = randomize_projections(new_model(enable_flag=False))
    checkpoint = {f"embedding_manager.{k}": v.half() for k, v in model.state_dict().items()}
    checkpoint["text_predictor.head.fc.bias"] = torch.zeros(3)
    assert text_embedding_state_dict_from_original(checkpoint).keys() == model.state_dict().keys()
    config = text_embedding_config_from_original(text_embedding_state_dict_from_original(checkpoint))
    assert config["token_dim"] == DIM and config["neck_length"] == 40 and config["style_ocr_trainable"]
    converted = text_embedding_model_from_original(checkpoint)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, checkpoint[f"embedding_manager.{key}"].float()), key
    yaml_like = {"model": {"params": {"embedding_manager_config": {"params": {"emb_type": "vit"}}}}}
    with pytest.raises(NotImplementedError, match="emb_type"):
        text_embedding_model_from_original(checkpoint, yaml_like)
    with pytest.raises(KeyError, match="embedding_manager"):
        text_embedding_state_dict_from_original({"text_predictor.x": torch.zeros(1)})
