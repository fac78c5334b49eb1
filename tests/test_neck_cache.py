"""--cache_ocr_necks: the frozen recognizer's neck memo (models/ocr/neck_cache.py) and its wiring in training."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import make_data, save_small_recognizer, tiny_config

from anytext2_diffusers.data import Collator
from anytext2_diffusers.models.ocr import FrozenNeckCache, recognize_crops
from anytext2_diffusers.testing import tiny_recognizer
from anytext2_diffusers.training.components import build_training_model
from anytext2_diffusers.training.config import TrainingConfig, parse_args
from anytext2_diffusers.training.data import build_datasets
from anytext2_diffusers.training.step import sample_generators

# A crop's neck read alone vs in a batch of 6: measured max abs difference 3.1e-6 on necks up to 1.65
# (tiny_recognizer, 1 and 2 threads, 45 random crops); the converted PP-OCRv3 gave 1.4e-5 on necks up to
# 18.6. Tolerance: 16x the tiny recognizer's spread.
ATOL, RTOL = 5e-5, 1e-5


@pytest.fixture(scope="module")
def recognizer(one_thread):
    return tiny_recognizer(seed=0).requires_grad_(False)


def crops(seed: int, n: int) -> list[torch.Tensor]:
    """Random 0..255 crops of various shapes, one of them vertical (it is rotated before reading)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(int(h), int(w)) for h, w in torch.randint(16, 90, (n - 1, 2), generator=g)] + [(120, 30)]
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]


def live(recognizer, inputs):
    with torch.no_grad():
        return recognize_crops(recognizer, inputs, batch_size=6).neck


def test_memo_returns_what_the_recognizer_returns(recognizer):
    first, second = crops(0, 7), crops(1, 5)
    cache = FrozenNeckCache(100)
    with torch.no_grad():
        filled = cache.necks(recognizer, first)
        assert (cache.hits, cache.misses, len(cache)) == (0, 7, 7)
        # a new call mixing repeats (in another order, one twice) and new crops
        mixed = [first[3], second[0], first[0], second[1], first[3], *second[2:]]
        served = cache.necks(recognizer, mixed)
    assert (cache.hits, cache.misses, len(cache)) == (3, 12, 12)
    torch.testing.assert_close(filled, live(recognizer, first), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(served, live(recognizer, mixed), atol=ATOL, rtol=RTOL)
    # a hit gives back exactly the neck stored when the crop was first read
    assert torch.equal(served[0], filled[3]) and torch.equal(served[2], filled[0]) and torch.equal(served[4], filled[3])
    # necks differ between crops, so a wrong mapping would fail above
    assert (filled[0] - filled[1]).abs().max() > 100 * ATOL


def test_memo_evicts_the_least_recently_used_at_its_bound(recognizer):
    a, b, c = crops(2, 3)
    cache = FrozenNeckCache(2)
    with torch.no_grad():
        cache.necks(recognizer, [a, b])
        cache.necks(recognizer, [a])  # a is now the most recently used
        cache.necks(recognizer, [c])  # evicts b
        assert (len(cache), cache.evictions, cache.hits, cache.misses) == (2, 1, 1, 3)
        cache.necks(recognizer, [a, c])
        assert (cache.hits, cache.misses) == (3, 3)
        cache.necks(recognizer, [b])  # read again
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (3, 4, 2, 2)
    with pytest.raises(ValueError, match="max_entries"):
        FrozenNeckCache(0)


def test_memo_is_bypassed_for_a_trainable_recognizer(one_thread):
    trainable = tiny_recognizer(seed=1)
    assert all(p.requires_grad for p in trainable.parameters())
    inputs = crops(3, 4)
    cache = FrozenNeckCache(100)
    with torch.no_grad():
        out = cache.necks(trainable, inputs)
        again = cache.necks(trainable, inputs)
    assert (cache.bypassed, cache.hits, cache.misses, len(cache)) == (8, 0, 0, 0)
    assert torch.equal(out, live(trainable, inputs)) and torch.equal(again, out)


def test_memo_is_emptied_when_the_weights_change(one_thread):
    recognizer = tiny_recognizer(seed=2).requires_grad_(False)
    inputs = crops(4, 3)
    cache = FrozenNeckCache(100)
    with torch.no_grad():
        before = cache.necks(recognizer, inputs)
        recognizer.load_state_dict(tiny_recognizer(seed=3).state_dict())  # in place: same tensors, new values
        after = cache.necks(recognizer, inputs)
    assert cache.resets == 1 and cache.hits == 0
    assert (after - before).abs().max() > 100 * ATOL
    torch.testing.assert_close(after, live(recognizer, inputs), atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def training_setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("necks")
    data = make_data(str(root / "train"), n=4, seed=0)
    ocr = save_small_recognizer(str(root / "ocr"))
    return root, data, ocr


@pytest.mark.parametrize("train_font_ocr", [True, False])
def test_training_step_with_the_memo_gives_the_same_loss(training_setup, train_font_ocr):
    """The memo serves the frozen glyph recognizer's reads (and the font crops when the font branch reads
    with it, --no-train_font_ocr); the trainable font recognizer is never served from it."""
    root, data, ocr = training_setup
    out = str(root / f"out{int(train_font_ocr)}")
    config = tiny_config(out, data, ocr, train_font_ocr=train_font_ocr, font_ocr_train_mode=False)
    train_set, _ = build_datasets(config)
    batch = Collator(config.max_lines)([train_set[(0, i)] for i in range(4)])
    model, _, _ = build_training_model(config)
    assert model.neck_cache is None
    with torch.no_grad():
        plain = model(batch, sample_generators(0, 0, batch.index))
        model.neck_cache = FrozenNeckCache(1000)
        filling = model(batch, sample_generators(0, 0, batch.index))
        cached = model(batch, sample_generators(0, 0, batch.index))
    lines = int(batch.n_lines.sum())
    reads = lines if train_font_ocr else 2 * lines  # glyph lines (+ font crops through the frozen recognizer)
    assert model.neck_cache.hits + model.neck_cache.misses == 2 * reads
    assert model.neck_cache.misses <= reads and model.neck_cache.hits >= reads
    for out_ in (filling, cached):
        torch.testing.assert_close(out_.loss, plain.loss, atol=ATOL, rtol=RTOL)
    assert "OCR neck cache" in model.cache_summary()


def test_cache_ocr_necks_option(tmp_path):
    config = parse_args(["--tiny_model", "--train_data", "x.json", "--cache_ocr_necks", "5000"])
    assert config.cache_ocr_necks == 5000
    assert TrainingConfig().cache_ocr_necks == 0
    with pytest.raises(ValueError, match="cache_ocr_necks"):
        TrainingConfig(cache_ocr_necks=-1)


def test_loop_runs_with_both_caches_and_logs_their_hits(training_setup, caplog):
    """Two epochs of the real loop with --cache_latents and --cache_ocr_necks: the second epoch encodes no
    target image; the log states both caches' counts after each epoch and at the end."""
    from _training_helpers import reset_accelerate

    from anytext2_diffusers.training import train

    root, data, ocr = training_setup
    config = tiny_config(
        str(root / "loop"), data, ocr, max_train_steps=4, train_font_ocr=False, cache_latents=True, cache_ocr_necks=500
    )
    caplog.set_level("INFO", logger="anytext2_diffusers.training.loop")
    try:
        result = train(config)
    finally:
        reset_accelerate()
    assert result.global_step == 4
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speed caches:")]
    assert len(summaries) == 2, summaries  # after epoch 0; the run ends within epoch 1
    assert "latent cache 4 images, 0 hits / 4 misses" in summaries[0]
    assert "latent cache 4 images, 4 hits / 4 misses" in summaries[1]
    assert "OCR neck cache" in summaries[1] and "0 bypassed" in summaries[1]
