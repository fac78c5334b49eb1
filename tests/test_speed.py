"""Speed switches of the training step: per-sample draws, the latent cache, channels_last, the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _training_helpers import make_data, save_small_recognizer, tiny_config

from anytext2_diffusers.data import Collator
from anytext2_diffusers.training.components import build_training_model
from anytext2_diffusers.training.data import build_datasets
from anytext2_diffusers.training.step import LatentCache, sample_generators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("speed")
    config = tiny_config(
        str(root / "out"),
        make_data(str(root / "train"), n=6, seed=0),
        save_small_recognizer(str(root / "ocr")),
        mask_ratio=0.5,
        font_ocr_train_mode=False,
        loss_alpha=0.003,
        loss_beta=0.003,
    )
    train_set, _ = build_datasets(config)
    model, _, _ = build_training_model(config)
    collate = Collator(config.max_lines)
    batch = collate([train_set[(0, i)] for i in range(6)])
    assert 0 < int(batch.edit_mode.sum()) < 6, "the test needs edit- and generation-mode samples"
    return config, model, batch, collate, train_set


def loss(model, batch, step=0):
    with torch.no_grad():
        return model(batch, sample_generators(0, step, batch.index))


def test_per_sample_draws_do_not_depend_on_the_batch_split(setup):
    _, model, batch, collate, train_set = setup
    whole = loss(model, batch).simple
    halves = torch.cat(
        [loss(model, collate([train_set[(0, i)] for i in idx])).simple for idx in ([0, 1, 2], [3, 4, 5])]
    )
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-7)
    other_step = loss(model, batch, step=1).simple
    assert not torch.allclose(whole, other_step)  # draws change with the step


def test_latent_caches_give_the_same_posteriors_and_loss(setup):
    """The blank (generation-mode) masked posterior is always encoded once; --cache_latents also keeps the
    target images' posteriors. Both give what encoding everything every step gives."""
    _, model, batch, _, _ = setup
    with torch.no_grad():
        live_mean, live_std = model._posterior(torch.cat([batch.image_float(), batch.masked_image_float()]))
        (mean, std), (mmean, mstd) = LatentCache(cache_images=False).posteriors(batch, model._posterior)
    torch.testing.assert_close(torch.cat([mean, mmean]), live_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([std, mstd]), live_std, rtol=1e-4, atol=1e-5)
    encoded = []
    posterior = model._posterior
    model._posterior = lambda images: (encoded.append(len(images)), posterior(images))[1]
    try:
        model.latent_cache = LatentCache(cache_images=False)
        plain = loss(model, batch)
        plain_again = loss(model, batch)
        model.latent_cache = LatentCache()
        filling = loss(model, batch)
        cached = loss(model, batch)
    finally:
        model.latent_cache = LatentCache(cache_images=False)
        del model._posterior
    n_edit = int(batch.edit_mode.sum())
    assert n_edit < len(batch)  # the batch has generation-mode samples, so the blank latent is exercised
    # default: 6 images + edit-mode masked (+ the blank once); --cache_latents: the same, then edit-mode only
    assert encoded == [6 + n_edit + 1, 6 + n_edit, 6 + n_edit + 1, n_edit]
    for out in (plain_again, filling, cached):
        for key in ("simple", "ocr", "ctc", "loss"):
            torch.testing.assert_close(getattr(out, key), getattr(plain, key), rtol=1e-5, atol=1e-6)


def test_cache_is_off_in_eval_mode(setup):
    """Validation batches index another data set: the cache must not serve them."""
    _, model, batch, _, _ = setup
    model.latent_cache = LatentCache()
    try:
        model.eval()
        loss(model, batch)
        assert len(model.latent_cache) == 0
    finally:
        model.train()
        model.latent_cache = LatentCache(cache_images=False)


def test_frozen_parts_get_no_weight_gradients(setup):
    """The OCR losses back-propagate through the VAE decoder and the recognizer to the latents only: the
    frozen parts' weights neither require nor collect gradients (they used to, uselessly)."""
    _, model, batch, _, _ = setup
    frozen = [model.frozen.vae, model.frozen.text_encoder, model.frozen.ocr]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    try:
        out = model(batch, sample_generators(0, 0, batch.index))
        assert out.decoded is not None and float(out.ctc.detach().abs().sum()) > 0  # the backward crosses both
        out.loss.backward()
        assert all(p.grad is None for m in frozen for p in m.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.controlnet.parameters())
    finally:
        model.zero_grad(set_to_none=True)


def test_channels_last_keeps_the_loss(setup):
    _, model, batch, _, _ = setup
    reference = loss(model, batch).loss
    try:
        model.unet.to(memory_format=torch.channels_last)
        model.controlnet.to(memory_format=torch.channels_last)
        torch.testing.assert_close(loss(model, batch).loss, reference, rtol=1e-4, atol=1e-5)
    finally:
        model.unet.to(memory_format=torch.contiguous_format)
        model.controlnet.to(memory_format=torch.contiguous_format)


def test_bench_train_step_prints_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--steps", "1", "--warmup", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "anytext2_step_s",
        "controlnet_step_s",
        "ratio_vs_controlnet",
        "anytext2_peak_mb",
        "controlnet_peak_mb",
    ):
        assert result[key] > 0, key
    assert result["ratio_vs_controlnet"] == pytest.approx(result["anytext2_step_s"] / result["controlnet_step_s"])
    assert result["anytext2_trainable_params"] > 0 and result["controlnet_trainable_params"] > 0
