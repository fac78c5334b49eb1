"""CLIPScore and FID code paths on a tiny random CLIPModel and a toy feature extractor, each checked
against an independent computation (transformers' own CLIP forward; scipy's sqrtm for FID)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
from eval_helpers import make_benchmark
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from anytext2_diffusers.evaluation import (
    BenchmarkError,
    CLIPScorer,
    clip_preprocess,
    evaluate_clip,
    evaluate_fid,
    load_benchmark,
    sample_paths,
)
from anytext2_diffusers.evaluation.cli import main
from anytext2_diffusers.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_clip():
    tok = tiny_tokenizer()
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    return model, tok


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("bench"), num_samples=2)


def _reference_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def test_preprocessing_matches_transformers_clip_processor():
    rng = np.random.default_rng(0)
    for size in ((64, 48), (40, 90), (50, 50)):
        img = Image.fromarray(rng.integers(0, 256, size=(*size[::-1], 3), dtype=np.uint8))
        ours = clip_preprocess(img, 32)
        theirs = _reference_processor()(images=img, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 32, 32)
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_clip_score_matches_model_forward(rendered, tiny_clip):
    model, tok = tiny_clip
    bench, images = rendered
    summary = evaluate_clip(images, bench, CLIPScorer(model, tok, batch_size=5), num_samples=2)
    # Independent: transformers' processor + CLIPModel.forward, cos = logits_per_image / logit_scale.
    items = load_benchmark(bench)
    per_k = []
    for k in range(2):
        pics = [Image.open(sample_paths(images, it, 2)[k]).convert("RGB") for it in items]
        tokens = tok([it.caption for it in items], padding=True, return_tensors="pt")
        pixels = _reference_processor()(images=pics, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        cos = out.logits_per_image.diag() / model.logit_scale.exp()
        per_k.append((2.5 * cos.clamp(min=0)).mean().item())
    assert summary["images_scored"] == 12 and summary["missing_images"] == 0
    assert summary["per_sample_index"]["0"] == pytest.approx(per_k[0], abs=1e-4)
    assert summary["clip_score"] == pytest.approx(np.mean(per_k), abs=1e-4)


def test_captions_are_truncated_to_77_tokens(tiny_clip):
    model, tok = tiny_clip
    scorer = CLIPScorer(model, tok)
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    base = "a red square with a long description " * 5  # ~190 characters = tokens of the tiny tokenizer
    scores = scorer.score([img] * 3, [base + "AAA", base + "ZZZ", "a red square"])
    assert scores[0] == scores[1] and scores[0] != scores[2]


def _toy_extractor(images: torch.Tensor) -> torch.Tensor:
    """A fixed feature map (N, 3, H, W) in [0, 1] -> (N, 3): mean colour (few dims keep the covariances of
    6 images full rank, where scipy's sqrtm is accurate)."""
    return images.mean(dim=(2, 3))


def _folder_features(folder):
    feats = []
    for p in sorted(folder.iterdir()):
        feats.append((np.asarray(Image.open(p).convert("RGB"), np.float64) / 255.0).mean(axis=(0, 1)))
    return np.array(feats)


def test_fid_with_a_custom_extractor_matches_scipy(rendered, tmp_path):
    _, images = rendered
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for p in sorted(images.iterdir()):
        shutil.copy(p, (gen if p.stem.endswith("_0") else ref) / p.name)
    for i in range(4):  # a reference folder may mix sizes
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(ref / f"r{i}.png")
    result = evaluate_fid(gen, ref, _toy_extractor, batch_size=4, save_reference_stats=tmp_path / "ref.npz")
    f1, f2 = _folder_features(gen), _folder_features(ref)
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert result["images_scored"] == 6 and result["reference_images"] == 10
    assert result["fid"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    again = evaluate_fid(gen, tmp_path / "ref.npz", _toy_extractor)
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-9)
    with pytest.raises(BenchmarkError, match="at least 2 images"):
        evaluate_fid(tmp_path, gen, _toy_extractor)  # tmp_path holds folders and an .npz, no image


def test_default_fid_extractor_needs_pytorch_fid():
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        from anytext2_diffusers.evaluation import pytorch_fid_inception

        with pytest.raises(BenchmarkError, match="pip install pytorch-fid"):
            pytorch_fid_inception()
    else:
        pytest.skip("pytorch-fid is installed; its weights may be downloaded, which tests must not do")


def test_cli_clip_and_report(rendered, tiny_clip, tmp_path, capsys):
    model, tok = tiny_clip
    bench, images = rendered
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "clip.json"
    argv = ["clip", "--images", str(images), "--benchmark", str(bench), "--num_samples", "2"]
    assert main([*argv, "--clip_model", str(folder), "--name", "English", "--report", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["clip_score"] <= 2.5 and result["name"] == "English"
    ocr = tmp_path / "ocr.json"
    ocr.write_text(json.dumps({"metric": "ocr", "name": "English", "sen_acc": 0.25, "ned": 0.5, "lines": 8}))
    assert main(["report", str(out), str(ocr), "--out", str(tmp_path / "rep" / "report.json")]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["measured"]["English"]["sen_acc"] == 0.25
    assert payload["measured"]["English"]["clip_score"] == pytest.approx(result["clip_score"])
    assert "Published AnyText2" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
