"""Dual-caption CLIP encoding: chunked image captions, placeholder substitution in text captions.

The substitution is checked end to end: giving a placeholder the token-embedding row of token X must
give exactly the plain CLIP output of the caption with X written in that place.
"""

from __future__ import annotations

import pytest
import torch

from anytext2_diffusers.models.conditioning import AnyText2CaptionEncoder, placeholder_token_id, split_chunks


@pytest.fixture()
def encoder(tiny):
    return AnyText2CaptionEncoder(tiny["tokenizer"], tiny["text_encoder"])


def plain(encoder, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.text_encoder(input_ids=ids).last_hidden_state


def token_rows(encoder, chars: str) -> torch.Tensor:
    """Token-embedding rows of single-character words, used as 'line embeddings' with a known meaning."""
    ids = [placeholder_token_id(encoder.tokenizer, c) for c in chars]
    return encoder.text_encoder.get_input_embeddings().weight[ids].detach().clone(), ids


def replace_placeholders(encoder, ids: torch.Tensor, per_row: list[list[int]]) -> torch.Tensor:
    """ids with the k-th placeholder of row b replaced by per_row[b][k] (fewer entries: the rest stay)."""
    ids = ids.clone()
    for b, new in enumerate(per_row):
        pos = (ids[b] == encoder.placeholder_id).nonzero(as_tuple=True)[0]
        for p, token in zip(pos, new):
            ids[b, p] = token
    return ids


def test_placeholder_must_be_one_token(tiny):
    assert placeholder_token_id(tiny["tokenizer"], "*") == 103  # '*</w>' in the tiny vocabulary
    with pytest.raises(ValueError, match="single-token"):
        AnyText2CaptionEncoder(tiny["tokenizer"], tiny["text_encoder"], placeholder="**")


def test_kth_placeholder_receives_kth_line(encoder):
    captions = ["Text: * , * , * . ", "words * and * here"]
    lines, ids = token_rows(encoder, "abcxy")
    with torch.no_grad():
        out = encoder.encode_text_captions(captions, lines, n_lines=[3, 2])
        as_list = encoder.encode_text_captions(captions, [lines[:3], lines[3:]])
    text_ids = encoder.tokenize_text_captions(captions)
    expected = plain(encoder, replace_placeholders(encoder, text_ids, [ids[:3], ids[3:]]))
    assert out.shape == (2, 77, 32)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(as_list, out, rtol=0, atol=0)
    # and it really changed something: the plain '*' encoding differs
    assert (out - plain(encoder, text_ids)).abs().max() > 1e-3


def test_substitution_happens_before_position_embeddings_and_is_causal(encoder):
    """Swapping two lines changes the output only from the first swapped placeholder on (causal mask)."""
    caption = ["pre * mid * post"]
    lines = torch.randn(2, 32)
    with torch.no_grad():
        a = encoder.encode_text_captions(caption, lines, [2])
        b = encoder.encode_text_captions(caption, lines.flip(0), [2])
    first = int((encoder.tokenize_text_captions(caption)[0] == encoder.placeholder_id).nonzero()[0])
    torch.testing.assert_close(a[:, :first], b[:, :first], rtol=0, atol=0)
    assert (a[:, first] - b[:, first]).abs().max() > 1e-3


def test_no_placeholder_is_plain_clip(encoder):
    captions = ["a plain caption", ""]
    ids = encoder.tokenize_text_captions(captions)
    expected = plain(encoder, ids)
    with torch.no_grad():
        with_lines = encoder.encode_text_captions(captions, torch.randn(3, 32), [2, 1])
        without = encoder.encode_text_captions(captions)
    assert torch.equal(with_lines, expected) and torch.equal(without, expected)


def test_more_lines_than_placeholders_and_the_reverse(encoder):
    lines, ids = token_rows(encoder, "abcd")
    captions = ["one * only", "three * , * , * ."]
    with torch.no_grad():
        # sample 0: 3 lines, 1 placeholder -> extra lines ignored; sample 1: 1 line, 3 placeholders -> the
        # first gets the line, the others keep the plain '*' embedding
        out = encoder.encode_text_captions(captions, lines, n_lines=[3, 1])
        no_lines = encoder.encode_text_captions(captions, [lines[:0], lines[:0]])
    text_ids = encoder.tokenize_text_captions(captions)
    expected = plain(encoder, replace_placeholders(encoder, text_ids, [ids[:1], ids[3:4]]))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(no_lines, plain(encoder, text_ids))


def test_long_image_caption_gives_77_per_chunk(encoder):
    long_caption = " ".join(["word"] * 40)  # 199 characters = 199 tokens in the tiny vocabulary
    captions = [long_caption, "short"]
    ids = encoder.tokenize_image_captions(captions)
    n_content = len(encoder.tokenizer(long_caption)["input_ids"]) - 2
    n_chunks = -(-n_content // 75)
    assert n_chunks == 3 and ids.shape == (2, 77 * n_chunks)
    with torch.no_grad():
        context = encoder.encode_image_captions(captions)
    assert context.shape == (2, 77 * n_chunks, 32)
    bos, eos = encoder.tokenizer.bos_token_id, encoder.tokenizer.eos_token_id
    full = encoder.tokenizer(long_caption)["input_ids"]
    for c in range(n_chunks):
        window = ids[:, 77 * c : 77 * (c + 1)]
        assert window[:, 0].tolist() == [bos, bos] and window[:, -1].tolist() == [eos, eos]
        torch.testing.assert_close(context[:, 77 * c : 77 * (c + 1)], plain(encoder, window), rtol=1e-6, atol=1e-6)
    # the long caption's content, in order, then EOS padding in the last chunk
    content = torch.cat([ids[0, 77 * c + 1 : 77 * c + 76] for c in range(n_chunks)]).tolist()
    assert content[: len(full) - 1] == full[1:] and set(content[len(full) - 1 :]) == {eos}


def test_split_chunks_reference_rule():
    ids = torch.tensor([[1, 5, 6, 7, 9], [1, 5, 9, 9, 9]])  # bos=1, eos/pad=9, chunk size 2
    chunks = split_chunks(ids, chunk_size=2)
    assert [c.tolist() for c in chunks] == [[[1, 5, 6, 9], [1, 5, 9, 9]], [[1, 7, 9, 9], [1, 9, 9, 9]]]
    assert split_chunks(torch.tensor([[1, 9]]), chunk_size=2)[0].tolist() == [[1, 9, 9, 9]]


def test_empty_captions_for_cfg(encoder):
    out = encoder(["", ""], ["", ""])
    expected_ids = torch.tensor([[encoder.tokenizer.bos_token_id] + [encoder.tokenizer.eos_token_id] * 76] * 2)
    assert torch.equal(out.image_input_ids, expected_ids) and torch.equal(out.text_input_ids, expected_ids)
    assert torch.equal(out.image_context, plain(encoder, expected_ids))
    assert torch.equal(out.text_context, out.image_context)
    assert encoder(["x"]).text_context is None


def test_text_caption_truncated_to_77(encoder):
    ids = encoder.tokenize_text_captions(["* " * 100])
    assert ids.shape == (1, 77) and int((ids == encoder.placeholder_id).sum()) == 75
    with torch.no_grad():
        out = encoder.encode_text_captions(["* " * 100], torch.randn(100, 32), [100])
    assert out.shape == (1, 77, 32)


def test_image_caption_substitution_switch(tiny):
    lines = torch.randn(2, 32)
    image, text = ["a sign saying *"], ["Text: * , * ."]
    on = AnyText2CaptionEncoder(tiny["tokenizer"], tiny["text_encoder"])
    off = AnyText2CaptionEncoder(tiny["tokenizer"], tiny["text_encoder"], substitute_in_image_caption=False)
    with torch.no_grad():
        a, b = on(image, text, lines, [2]), off(image, text, lines, [2])
        line0_only = on.encode_image_captions(image, [lines[:1]])
    # reference behaviour: the image caption's '*' takes line 0, the text caption's counter restarts at line 0
    torch.testing.assert_close(a.image_context, line0_only, rtol=0, atol=0)
    assert torch.equal(b.image_context, plain(off, b.image_input_ids))
    assert (a.image_context - b.image_context).abs().max() > 1e-3
    torch.testing.assert_close(a.text_context, b.text_context, rtol=0, atol=0)


def test_gradients_reach_lines_not_clip(encoder):
    assert not any(p.requires_grad for p in encoder.text_encoder.parameters()) and not encoder.text_encoder.training
    lines = torch.randn(3, 32, requires_grad=True)
    out = encoder(["image"], ["Text: * , * , * ."], lines, [3])
    (out.text_context * torch.randn_like(out.text_context)).sum().backward()
    assert lines.grad is not None and (lines.grad.abs().sum(dim=1) > 0).all()
    assert all(p.grad is None for p in encoder.text_encoder.parameters())


def test_end_to_end_gradients_into_text_embedding(tiny):
    """Caption context -> line tokens -> every trainable part of the text embedding model."""
    from test_text_embedding import calibrated_recognizer, make_batch, randomize_projections

    from anytext2_diffusers.models.text_embedding import AnyText2TextEmbeddingModel

    glyph_recognizer = calibrated_recognizer(1).requires_grad_(False)
    model = AnyText2TextEmbeddingModel.from_text_encoder(tiny["text_encoder"], font_recognizer=calibrated_recognizer(2))
    randomize_projections(model).train()
    encoder = AnyText2CaptionEncoder(tiny["tokenizer"], tiny["text_encoder"])
    emb = model(**make_batch(n_lines=(1, 1)), glyph_recognizer=glyph_recognizer)
    out = encoder(["a", "b"], ["Text: * .", "Text: * ."], emb.line_embeds, emb.n_lines)
    out.text_context.pow(2).mean().backward()
    for name in ("proj.0.weight", "position_encoder.conv2.weight", "style_proj.0.weight", "color_proj.0.weight"):
        assert model.get_parameter(name).grad.abs().max() > 0, name
    assert model.font_predictor.backbone.conv1._conv.weight.grad.abs().max() > 0
    assert all(p.grad is None for p in glyph_recognizer.parameters())
    assert all(p.grad is None for p in tiny["text_encoder"].parameters())
