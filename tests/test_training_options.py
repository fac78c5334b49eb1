"""The diffusers train_controlnet.py options: each changes what it should, and its default changes nothing."""

from __future__ import annotations

import glob
import importlib.metadata
import os

import pytest
import torch
from _training_helpers import Recorder, make_data, reset_accelerate, save_small_recognizer, tiny_config
from diffusers import DDPMScheduler

from anytext2_diffusers.training import preflight
from anytext2_diffusers.training.config import TrainingConfig, parse_args
from anytext2_diffusers.training.losses import (
    LossSettings,
    min_snr_weights,
    offset_noise,
    p_losses,
    predict_x0,
    training_target,
)
from anytext2_diffusers.training.optim import make_lr_scheduler, make_optimizer


def _lrs(config, steps=20):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_lr_scheduler(config, opt, max_steps=steps)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_lr_num_cycles_restarts_the_cosine():
    cosine = _lrs(TrainingConfig(lr_scheduler="cosine"))
    one = _lrs(TrainingConfig(lr_scheduler="cosine_with_restarts"))
    two = _lrs(parse_args(["--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "2", "--tiny_model"]))
    assert one == pytest.approx(cosine)  # the default (1 cycle) keeps today's schedule
    assert two[10] == pytest.approx(1.0)  # the second cycle starts again at the full rate
    assert two[5] == pytest.approx(0.5) and cosine[10] == pytest.approx(0.5)


def test_lr_power_shapes_the_polynomial():
    linear = _lrs(TrainingConfig(lr_scheduler="polynomial"))
    squared = _lrs(parse_args(["--lr_scheduler", "polynomial", "--lr_power", "2", "--tiny_model"]))
    # diffusers' polynomial decays to lr_end=1e-7: (lr - lr_end) * (1 - t / T) ** power + lr_end
    assert linear[10] == pytest.approx(0.5, abs=1e-6)
    assert squared[10] == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "all"])
def test_report_to_takes_accelerates_trackers(name):
    from accelerate.utils import LoggerType

    assert preflight.accelerate_trackers() == [t.value for t in LoggerType]
    assert name in preflight.accelerate_trackers()
    assert preflight.report_to_trackers(name) == [name]
    assert not any("--report_to" in e for e in preflight.config_errors(TrainingConfig(tiny_model=True, report_to=name)))


def test_report_to_lists_none_and_unknown():
    assert preflight.report_to_trackers("tensorboard,mlflow") == ["tensorboard", "mlflow"]
    assert preflight.report_to_trackers("none") is None
    errors = preflight.config_errors(TrainingConfig(tiny_model=True, report_to="tensorbored"))
    assert any(e.startswith("--report_to tensorbored: unknown tracker ['tensorbored']") for e in errors), errors


def test_min_snr_weights_match_diffusers_examples():
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 200, 500, 999])
    w = min_snr_weights(scheduler, t, 5.0)
    snr = compute_snr(scheduler, t)
    expected = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
    torch.testing.assert_close(w, expected)
    assert w[0] < 1 and w[-1] == 1  # low-noise steps (SNR > gamma) are damped, noisy ones untouched


def test_snr_weights_scale_the_diffusion_term_only():
    g = torch.Generator().manual_seed(0)
    eps, noise, x = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    inv_mask = torch.zeros(2, 1, 64, 64)
    t = torch.tensor([10, 900])
    ac = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    base = p_losses(eps, noise, x, t, inv_mask, ac, LossSettings())
    weights = torch.tensor([0.25, 1.0])
    weighted = p_losses(eps, noise, x, t, inv_mask, ac, LossSettings(), simple_weights=weights)
    torch.testing.assert_close(weighted.simple, base.simple * weights)
    assert weighted.loss != base.loss


def test_offset_noise_adds_a_constant_per_channel():
    noise = torch.randn(2, 4, 8, 8)
    draws = torch.randn(2, 4)
    out = offset_noise(noise, 0.1, draws)
    torch.testing.assert_close(out - noise, (0.1 * draws)[:, :, None, None].expand_as(noise))


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4096))]


def test_8bit_adam_keeps_its_state_in_8_bits():
    import bitsandbytes as bnb  # the bnb extra is part of test/dev

    if (problem := preflight.bnb_error()) is not None:
        pytest.fail(problem)  # the test extra installs a release that runs here: a failure, not a skip
    params = _params()
    opt = make_optimizer([{"params": params}], TrainingConfig(use_8bit_adam=True), lr=1e-3)
    assert isinstance(opt, bnb.optim.AdamW8bit)
    params[0].grad = torch.ones_like(params[0])
    before = params[0].detach().clone()
    opt.step()
    state = opt.state[params[0]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert not torch.equal(before, params[0].detach())
    plain = make_optimizer([{"params": _params()}], TrainingConfig(), lr=1e-3)
    assert type(plain) is torch.optim.AdamW


def test_8bit_adam_preflight(monkeypatch):
    def version(name, real=importlib.metadata.version):
        if name != "bitsandbytes":
            return real(name)
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    errors = preflight.config_errors(TrainingConfig(tiny_model=True, use_8bit_adam=True))
    assert "--use_8bit_adam needs bitsandbytes: pip install 'anytext2-diffusers[bnb]'" in errors
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.42.0")
    assert "predates" in preflight.bnb_error(gpu=False)
    assert preflight.bnb_error(gpu=True) is None
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.50.2")
    assert preflight.bnb_error(gpu=False) is None


def test_dataset_name_is_the_training_data(tmp_path, monkeypatch):
    config = parse_args(["--tiny_model", "--dataset_name", "user/anyword-mini"])
    assert config.train_data == ["user/anyword-mini"]
    with pytest.raises(ValueError, match="--dataset_name and --train_data"):
        TrainingConfig(dataset_name="user/a", train_data=["b.json"])
    # the saved config (both keys set) reads back
    config.save(str(tmp_path / "c.yaml"))
    assert parse_args(["--config", str(tmp_path / "c.yaml")]).train_data == ["user/anyword-mini"]
    # a Hub id goes to datasets.load_dataset (mocked: no network here)
    import datasets

    from anytext2_diffusers.training import data as training_data

    seen = {}

    def fake_load(name, **kw):
        seen["name"] = name
        raise RuntimeError("stop")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(RuntimeError, match="stop"):
        training_data.load_rows(config.train_data, config)
    assert seen["name"] == "user/anyword-mini"


def _position_image(path, lines: int) -> str:
    """A 64 px position image: ``lines`` white bars on black, one under the other."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), 0)
    for i in range(lines):
        ImageDraw.Draw(image).rectangle([8, 8 + 24 * i, 56, 24 + 24 * i], fill=255)
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def one_step_runs(tmp_path_factory):
    """Two optimizer steps of the tiny model per option set (same seed, data and weights); the logged scalars.
    snr_gamma 0.01: the drawn timesteps' SNR exceeds it, so their weights are below 1 (gamma 5 left them at 1)."""
    from anytext2_diffusers.training import train

    root = tmp_path_factory.mktemp("options_runs")
    ocr = save_small_recognizer(str(root / "ocr"))
    data = make_data(str(root / "train"), n=2, seed=0)
    logs = {}
    options = dict(
        default=dict(checkpointing_steps=2),
        snr=dict(snr_gamma=0.01),
        offset=dict(noise_offset=0.1),
        vpred=dict(prediction_type="v_prediction"),
        adam8=dict(use_8bit_adam=True, checkpointing_steps=2),
        prompts=dict(
            validation_prompt=['a sign that reads "OPEN"', 'a card with "HI" and "YO"'],
            validation_image=[_position_image(root / "one.png", 1), _position_image(root / "two.png", 2)],
            validation_data=[],
            report_to="tensorboard",
        ),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in options.items():
            recorder = Recorder()
            train(tiny_config(str(root / name), data, ocr, max_train_steps=2, **extra), recorder)
            logs[name] = recorder.logs
            logs[name + "_dir"] = str(root / name)
            reset_accelerate()
    finally:
        torch.set_num_threads(threads)
    return logs


def test_snr_gamma_and_noise_offset_reach_the_training_step(one_step_runs):
    default = one_step_runs["default"][1]
    assert default["t/sim"] != one_step_runs["snr"][1]["t/sim"]
    assert default["t/sim"] != one_step_runs["offset"][1]["t/sim"]


def test_prediction_type_reaches_the_loss_and_the_saved_scheduler(one_step_runs):
    import json

    assert one_step_runs["default"][1]["t/sim"] != one_step_runs["vpred"][1]["t/sim"]  # same draws, v target
    saved = {}
    for name in ("default", "vpred"):
        with open(os.path.join(one_step_runs[name + "_dir"], "scheduler", "scheduler_config.json")) as f:
            saved[name] = json.load(f)["prediction_type"]
    assert saved == {"default": "epsilon", "vpred": "v_prediction"}  # the pipeline samples as it was trained


def test_v_target_and_x0_from_v_invert_each_other():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    v = training_target(scheduler, x0, noise, t)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, noise, t))
    x_t = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(predict_x0(x_t, t, v, scheduler.alphas_cumprod, "v_prediction"), x0)
    eps = DDPMScheduler(num_train_timesteps=1000)
    assert training_target(eps, x0, noise, t) is noise  # the reference's target, untouched
    with pytest.raises(ValueError, match="'sample'"):
        training_target(DDPMScheduler(prediction_type="sample"), x0, noise, t)


def test_min_snr_weights_for_v_prediction_match_diffusers_examples():
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    t = torch.tensor([0, 200, 500, 999])
    snr = compute_snr(scheduler, t)
    torch.testing.assert_close(min_snr_weights(scheduler, t, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))


def _optimizer_state_dtypes(run_dir: str) -> dict:
    """dtype name -> count over the Adam moments (state1/state2, exp_avg/exp_avg_sq) of checkpoint-2."""
    path = os.path.join(run_dir, "checkpoint-2", "optimizer.bin")
    counts: dict = {}
    for param_state in torch.load(path, weights_only=True, map_location="cpu")["state"].values():
        # bitsandbytes' state_dict nests each parameter's tensors under this key
        moments = param_state.get("__bnb_optimizer_quant_state__", param_state)
        for key in ("state1", "state2", "exp_avg", "exp_avg_sq"):
            if key in moments:
                name = str(moments[key].dtype)
                counts[name] = counts.get(name, 0) + 1
    return counts


def test_8bit_adam_reaches_the_training_loop(one_step_runs):
    # bitsandbytes keeps 32-bit moments for tensors under 4096 values; the larger ones are stored in 8 bits
    eight = _optimizer_state_dtypes(one_step_runs["adam8_dir"])
    plain = _optimizer_state_dtypes(one_step_runs["default_dir"])
    assert eight.get("torch.uint8", 0) > 0, eight
    assert set(plain) == {"torch.float32"}, plain


def test_validation_prompts_are_sampled_and_logged_without_a_validation_split(one_step_runs):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = one_step_runs["prompts_dir"]
    grid = Image.open(os.path.join(run, "validation", "prompts-step-000002.png"))
    # a header strip, then one 64 px row per prompt of 3 tiles (positions, generated, prompt / OCR)
    assert grid.width == 3 * 64 and grid.height > 2 * 64
    assert not os.path.exists(os.path.join(run, "validation", "step-000002.png"))  # no validation split
    tags = set()
    for path in glob.glob(os.path.join(run, "logs", "**", "events.out.tfevents.*"), recursive=True):
        events = EventAccumulator(path, size_guidance={"images": 0})
        events.Reload()
        tags.update(events.Tags()["images"])
    assert "v/prompt_images" in tags


def test_validation_prompt_preflight(tmp_path):
    image = _position_image(tmp_path / "p.png", 1)
    ok = TrainingConfig(tiny_model=True, validation_prompt=['say "A"', 'say "B"'], validation_image=[image])
    assert not any("--validation" in e for e in preflight.config_errors(ok))
    errors = preflight.config_errors(
        TrainingConfig(
            tiny_model=True,
            validation_prompt=["no quotes", 'say "B"', 'say "C"'],
            validation_image=[image, str(tmp_path / "missing.png")],
        )
    )
    assert "--validation_image: 2 images for 3 prompts; give one per prompt or one for all" in errors
    assert "--validation_prompt 'no quotes': no text in double quotes (e.g. a sign that reads \"OPEN\")" in errors
    assert f"--validation_image {tmp_path / 'missing.png'}: file not found" in errors
