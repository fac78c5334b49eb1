"""The demo-model recipe: word pools, the VAE stage (exact resume) and every stage on a few steps."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from anytext2_diffusers import demo_model as dm
from anytext2_diffusers.data.demo_words import HELDOUT_CHINESE, HELDOUT_LATIN, HELDOUT_WORDS, training_pools
from anytext2_diffusers.data.synth import make_demo_data
from anytext2_diffusers.training.vae import VAETrainingConfig, train_vae, vae_config


def test_training_pools_exclude_the_heldout_words_and_synth_draws_only_from_them(tmp_path):
    latin, chinese, traditional = training_pools(0, n_latin=3000, n_chinese=3000)
    assert len(HELDOUT_WORDS) == 50 and len(set(HELDOUT_WORDS)) == 50
    assert not {w.lower() for w in latin} & {w.lower() for w in HELDOUT_LATIN}
    assert not set(chinese) & set(HELDOUT_CHINESE) and traditional == ()
    assert training_pools(0, 50, 50) == training_pools(0, 50, 50)
    pools = (latin[:5], chinese[:5], ())
    path = make_demo_data(str(tmp_path), n=12, seed=3, resolution=128, lines_per_image=(1, 3), pools=pools)
    with open(path, encoding="utf-8") as f:
        texts = [a["text"] for r in json.load(f)["data_list"] for a in r["annotations"]]
    assert texts and set(texts) <= set(latin[:5]) | set(chinese[:5])


def test_clean_style_draws_horizontal_valid_contrasting_lines_and_varied_is_unchanged(tmp_path):
    from PIL import Image

    from anytext2_diffusers.data.synth import CLEAN_CONTRAST, _luminance

    path = make_demo_data(str(tmp_path / "clean"), n=12, seed=5, resolution=128, lines_per_image=(1, 3), style="clean")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)["data_list"]
    lines = [a for r in records for a in r["annotations"]]
    assert len(lines) >= 12 and all(a["valid"] for a in lines)
    for record in records:
        image = np.asarray(Image.open(tmp_path / "clean" / "imgs" / record["img_name"]).convert("RGB"), dtype=float)
        for a in record["annotations"]:
            xs, ys = {p[0] for p in a["polygon"]}, {p[1] for p in a["polygon"]}
            assert len(xs) == len(ys) == 2  # an axis-aligned box: horizontal, unrotated
            # The box's corner pixels are background (the line's 4 px padding); their luminance is at
            # least CLEAN_CONTRAST (80) from the text colour's; 20 of it is left for JPEG artefacts.
            for x, y in ((min(xs) + 1, min(ys) + 1), (max(xs) - 2, max(ys) - 2)):
                assert abs(_luminance(image[y, x]) - _luminance(a["color"])) >= CLEAN_CONTRAST - 20, (record, a)
    # The default style draws the records it always drew (the recipe's data stage stays reproducible).
    varied = make_demo_data(str(tmp_path / "v1"), n=6, seed=5, resolution=128, lines_per_image=(1, 3))
    default = make_demo_data(str(tmp_path / "v2"), n=6, seed=5, resolution=128, lines_per_image=(1, 3), style="varied")
    with open(varied, encoding="utf-8") as f, open(default, encoding="utf-8") as g:
        assert json.load(f)["data_list"] == json.load(g)["data_list"]
    with pytest.raises(ValueError, match="style"):
        make_demo_data(str(tmp_path / "bad"), n=1, style="fancy")


def test_recipe_vae_normalises_groups_of_channels_not_single_channels():
    # A GroupNorm with one channel per group normalises each channel of each crop on its own, which strips the
    # crop's colour and contrast (the first run's reconstructions were grey); the recipe keeps >= 4 per group.
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**vae_config(VAETrainingConfig(output_dir="unused")))
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and min(m.num_channels // m.num_groups for m in norms) >= 4
    assert vae.config.latent_channels == 4 and 2 ** (len(vae.config.block_out_channels) - 1) == 8


def _vae_config(out, steps):
    return VAETrainingConfig(
        output_dir=str(out),
        resolution=64,
        crop=32,
        batch_size=2,
        max_train_steps=steps,
        checkpointing_steps=2,
        logging_steps=2,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
    )


def test_vae_stage_resumes_exactly_and_learns(tmp_path):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))
    straight = train_vae(_vae_config(tmp_path / "a", 4), images)["vae"]
    train_vae(_vae_config(tmp_path / "b", 2), images)
    resumed = train_vae(_vae_config(tmp_path / "b", 4), images)["vae"]
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name  # same crops, posterior draws and optimizer state after the resume
    rows = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert os.path.isfile(tmp_path / "b" / "vae" / "config.json")
    changed = _vae_config(tmp_path / "b", 6)
    changed.norm_num_groups = 16  # same weight shapes: only the recorded config can tell
    with pytest.raises(ValueError, match="checkpoint.pt: field vae_config.norm_num_groups is 8"):
        train_vae(changed, images)


def test_vae_latent_channels_reach_the_model_and_a_changed_count_is_refused(tmp_path):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    config = _vae_config(tmp_path, 2)
    config.latent_channels = 16
    vae = train_vae(config, images)["vae"]
    assert vae.config.latent_channels == 16
    assert vae.encode(images.float() / 127.5 - 1).latent_dist.mode().shape == (2, 16, 8, 8)  # image / 8
    config.latent_channels, config.max_train_steps = 4, 4
    with pytest.raises(ValueError, match="field vae_config.latent_channels is 16"):
        train_vae(config, images)


def test_vae_decoder_continuation_keeps_the_encoder_and_trains_the_decoder(tmp_path):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))
    first = train_vae(_vae_config(tmp_path / "a", 2), images)["vae"]
    config = _vae_config(tmp_path / "b", 2)
    config.init_from, config.train_encoder = str(tmp_path / "a" / "vae"), False
    second = train_vae(config, images)["vae"]
    changed = {
        n for (n, p), q in zip(first.state_dict().items(), second.state_dict().values()) if not torch.equal(p, q)
    }
    encoder = {n for n in first.state_dict() if n.startswith(("encoder.", "quant_conv."))}
    assert changed and not changed & encoder  # the latents stay those the diffusion model learned
    assert any(n.startswith("decoder.") for n in changed)
    second_resumed = train_vae(dataclasses.replace(config, max_train_steps=3), images)["vae"]  # resumes its own
    assert all(torch.equal(second_resumed.state_dict()[n], first.state_dict()[n]) for n in encoder)
    with pytest.raises(ValueError, match="train_encoder=False needs init_from"):
        train_vae(dataclasses.replace(config, init_from=None, output_dir=str(tmp_path / "c")), images)
    other = dataclasses.replace(config, latent_channels=8, output_dir=str(tmp_path / "d"))
    with pytest.raises(ValueError, match="vae: field config.json latent_channels is 4, this run's VAE has 8"):
        train_vae(other, images)


@pytest.mark.filterwarnings("ignore")
def test_every_recipe_stage_runs_on_a_few_steps(tmp_path):
    work = str(tmp_path / "work")
    data = dm.stage_data(work, n_train=6, n_heldout=4)
    vae = dm.stage_vae(work, data, steps=1)
    # The originals are readable (the OCR and cropping are wired); one VAE step cannot reconstruct text.
    assert vae["ocr_original"]["lines"] > 0 and vae["ocr_original"]["ned"] > 0.8
    assert vae["ocr_reconstructed"]["lines"] == vae["ocr_original"]["lines"]
    unet = dm.stage_unet(work, data, steps=2, batch_size=2, prediction_type="v_prediction")
    assert unet["steps"] == 2 and np.isfinite(unet["final_loss"])
    init = dm.stage_init(work, data, unet)
    with open(os.path.join(init["pipeline"], "scheduler", "scheduler_config.json")) as f:
        assert json.load(f)["prediction_type"] == init["prediction_type"] == "v_prediction"  # the loop follows it
    with open(os.path.join(init["pipeline"], "vae", "config.json")) as f:
        assert json.load(f)["scaling_factor"] == init["vae_scaling_factor"] > 0
    # The AnyText2 model starts from the pretrained UNet, and WriteNet from its encoder (as from SD1.5's).
    from diffusers import UNet2DConditionModel

    from anytext2_diffusers.models import AnyText2ControlNetModel

    pretrained = UNet2DConditionModel.from_pretrained(unet["unet"]).state_dict()
    started = UNet2DConditionModel.from_pretrained(init["pipeline"], subfolder="unet").state_dict()
    assert all(torch.equal(pretrained[n], started[n]) for n in pretrained)
    writenet = AnyText2ControlNetModel.from_pretrained(init["pipeline"], subfolder="controlnet").state_dict()
    copied = [n for n in writenet if n.startswith("down_blocks.") and n in pretrained]
    assert copied and all(torch.equal(writenet[n], pretrained[n]) for n in copied)
    one_quick_step = ["--train_batch_size", "2", "--validation_num_inference_steps", "2", "--report_to", "none"]
    one_quick_step += ["--checkpointing_steps", "1"]
    trained = dm.stage_anytext2(work, data, init, steps=1, extra_args=one_quick_step)
    assert "--no-sd_locked" in trained["command"] and os.path.isfile(
        os.path.join(trained["pipeline"], "model_index.json")
    )
    # The held-out-word images are the loop's validation set: a grid of them is written (at the end here).
    assert f"--validation_data {data['heldout_images']}" in trained["command"]
    assert os.path.isfile(os.path.join(trained["pipeline"], "validation", "step-000001.png"))
    # The focus stage runs the same loop on from that pipeline, on the clean-style images.
    focus_data = dm.stage_focus_data(work, n_train=4)
    focused = dm.stage_focus(work, data, focus_data, trained, steps=1, extra_args=one_quick_step)
    assert f"--pretrained_model_name_or_path {trained['pipeline']}" in focused["command"]
    assert f"--train_data {focus_data['train']}" in focused["command"] and "--no-sd_locked" in focused["command"]
    assert focused["pipeline"] == os.path.join(work, "focus") != trained["pipeline"]
    with open(focus_data["train"], encoding="utf-8") as f:
        assert all(a["valid"] for r in json.load(f)["data_list"] for a in r["annotations"])
    assert dm.score_anytext2_checkpoint(work, data, steps=2, limit=1, stage="focus")["checkpoint"] == "checkpoint-1"
    with dm.checkpoint_probe(work, stage="focus") as (ckpt, parts, config):  # what the probes read
        assert os.path.basename(ckpt) == "checkpoint-1" and data["heldout_images"] in config.validation_data
        saved = AnyText2ControlNetModel.from_pretrained(os.path.join(ckpt, "controlnet")).state_dict()
        assert all(torch.equal(saved[k], w) for k, w in parts["controlnet"].state_dict().items())
    # The anneal stage runs the loop on from the focus pipeline with the learning rate falling to 0.
    annealed = dm.stage_anneal(work, data, focus_data, focused, steps=2, extra_args=one_quick_step)
    assert f"--pretrained_model_name_or_path {focused['pipeline']}" in annealed["command"]
    assert f"--train_data {focus_data['train']}" in annealed["command"]
    assert f"--learning_rate {dm.ANNEAL_LR} --lr_scheduler linear" in annealed["command"]
    assert annealed["pipeline"] == os.path.join(work, "anneal")
    with open(os.path.join(work, "anneal", "checkpoint-2", "training_state.json"), encoding="utf-8") as f:
        assert json.load(f)["global_step"] == 2
    decoder = dm.stage_vae(work, data, steps=1, stage="vae_decoder")
    assert decoder["config"]["train_encoder"] is False and decoder["seed"] == 1
    # The ocr stage: the loop on from the anneal pipeline with the tuned decoder put in, OCR losses on.
    trained = dm.stage_ocr(work, data, focus_data, annealed, steps=1, extra_args=one_quick_step)
    assert f"--pretrained_model_name_or_path {os.path.join(work, 'ocr_source')}" in trained["command"]
    weight = dm.OCR_LOSS_WEIGHT
    assert f"--loss_alpha {weight} --loss_beta {weight} --no-with_step_weight" in trained["command"]
    assert f"--learning_rate {dm.OCR_LR} --lr_scheduler linear" in trained["command"]
    from diffusers import AutoencoderKL

    source_vae = AutoencoderKL.from_pretrained(os.path.join(work, "ocr_source", "vae")).state_dict()
    tuned_vae = AutoencoderKL.from_pretrained(os.path.join(work, "vae_decoder", "vae")).state_dict()
    assert all(torch.equal(source_vae[n], tuned_vae[n]) for n in tuned_vae)  # the OCR losses read the tuned decoder
    assert dm.score_anytext2_checkpoint(work, data, steps=2, limit=1, stage="ocr")["checkpoint"] == "checkpoint-1"
    # The ocr stage's restarts: its losses again, each on from the stage before, the learning rate restarted.
    ocr_record = trained
    trained = dm.stage_ocr_restart(work, data, focus_data, ocr_record, ocr_record, 1, 1, extra_args=one_quick_step)
    assert f"--pretrained_model_name_or_path {ocr_record['pipeline']}" in trained["command"]
    out_dirs = (f"--output_dir {os.path.join(work, 'ocr')} ", f"--output_dir {os.path.join(work, 'ocr2')} ")
    same_options = ocr_record["command"].replace(*out_dirs).replace(os.path.join(work, "ocr_source"), work + "/ocr")
    assert trained["command"] == same_options  # the ocr stage's command from its pipeline into its own folder
    assert trained["pipeline"] == os.path.join(work, "ocr2") and trained["step_weight"] is dm.OCR_STEP_WEIGHT
    assert dm.score_anytext2_checkpoint(work, data, steps=2, limit=1, stage="ocr2")["checkpoint"] == "checkpoint-1"
    first = trained  # the second restart goes on from the first, with a CTC weight of its own
    trained = dm.stage_ocr_restart(work, data, focus_data, ocr_record, first, 2, 1, 0.3, extra_args=one_quick_step)
    assert f"--pretrained_model_name_or_path {first['pipeline']}" in trained["command"]
    assert f"--output_dir {os.path.join(work, 'ocr3')} " in trained["command"]
    assert f"--loss_alpha {weight} --loss_beta 0.3 --no-with_step_weight" in trained["command"]
    assert (trained["stage"], trained["loss_beta"], trained["pipeline"]) == ("ocr3", 0.3, os.path.join(work, "ocr3"))
    assert dm.score_anytext2_checkpoint(work, data, steps=2, limit=1, stage="ocr3")["checkpoint"] == "checkpoint-1"
    assert dm._stage_source(work, "ocr3") == first["pipeline"]  # its checkpoints complete the first restart's
    scored = dm.stage_eval(work, data, trained["pipeline"], steps=2, limit=2)
    assert scored["ocr"]["lines"] == 2 and scored["vae"] == "vae_decoder"
    followed = dm.score_anytext2_checkpoint(work, data, steps=2, limit=2)  # how a running stage is followed
    assert followed["checkpoint"] == "checkpoint-1" and followed["ocr"]["lines"] == 2
    assert {"controlnet", "attnx", "text_embedding", "unet"} == set(followed["components"])
    assert followed["guidance_scale"] == dm.EVAL_GUIDANCE == 3.0  # the recipe's scale (docs: "Guidance scale")
    unguided = dm.score_anytext2_checkpoint(work, data, steps=2, limit=1, guidance_scale=1.0)
    for scale in ("3", "1"):  # each scale's images in their own folder (never reused across scales)
        assert os.listdir(os.path.join(work, "anytext2", f"eval_checkpoint-1_cfg{scale}")), scale
    assert unguided["guidance_scale"] == 1.0 and unguided["ocr"]["lines"] == 1
    out = str(tmp_path / "export")
    exported = dm.stage_export(work, trained["pipeline"], out)
    assert not os.path.exists(os.path.join(out, "ocr")) and exported["bytes"] < 20e6
    assert dm.drop_source_paths(out) == []  # the export left no maker's path in a config
    from safetensors.torch import load_file

    from anytext2_diffusers.pipelines import AnyText2Pipeline
    from anytext2_diffusers.testing import tiny_recognizer

    for name in ("unet", "vae", "controlnet", "attnx", "text_embedding"):
        weights = load_file(os.path.join(out, name, "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float16}, name
    pipe = AnyText2Pipeline.from_pretrained(out, ocr=tiny_recognizer())
    source = AnyText2Pipeline.from_pretrained(trained["pipeline"])
    for name in ("unet", "controlnet", "text_embedding"):
        drop = "_name_or_path"
        loaded, saved = getattr(pipe, name).config, getattr(source, name).config
        assert {k: v for k, v in loaded.items() if k != drop} == {k: v for k, v in saved.items() if k != drop}
    with open(os.path.join(work, "recipe.json"), encoding="utf-8") as f:
        assert [r["stage"] for r in json.load(f)] == [
            "data", "vae", "unet", "init", "anytext2", "focus_data", "focus", "anneal", "vae_decoder", "ocr", "ocr2",
            "ocr3", "eval", "export",
        ]  # fmt: skip
    shipped = AutoencoderKL.from_pretrained(os.path.join(out, "vae")).state_dict()
    tuned = AutoencoderKL.from_pretrained(os.path.join(work, "vae_decoder", "vae")).state_dict()
    assert all(torch.equal(shipped[n], tuned[n].half()) for n in tuned)  # the export ships the tuned decoder
    assert AutoencoderKL.from_pretrained(os.path.join(out, "vae")).config.scaling_factor == init["vae_scaling_factor"]
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "anytext2-train --pretrained_model_name_or_path" in card and '"seed": 0' in card
    assert "--anneal_steps 2 --ocr_steps 1 --ocr_restarts 1 1:0.3 --ocr_loss_alpha 0.03 --ocr_loss_beta 0.03" in card
    assert "--ocr_loss_beta 0.03 --no-ocr_step_weight\n" in card
    with open(os.path.join(work, "recipe.json"), encoding="utf-8") as f:
        assert [r["stage"] for r in dm.records_from_card(card)] == [r["stage"] for r in json.load(f)]

    # Going on from an export whose last loop stage is anneal (here: this one with its ocr records cut from the
    # card): the card stands for every stage up to vae_decoder, the folder for their result.
    import re
    import shutil

    def export_without(stages):
        folder = str(tmp_path / ("export_without_" + "_".join(stages)))
        shutil.copytree(out, folder)
        text = card
        for stage in stages:
            text, cut = re.subn(rf"^## {stage}\n\n```json\n.*?\n```\n", "", text, flags=re.M | re.S)
            assert cut == 1, stage
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
        return folder

    annealed_out = export_without(["ocr", "ocr2", "ocr3"])
    with pytest.raises(ValueError, match=r"records the \['ocr2', 'ocr3'\] stage"):  # it would be run again on top of it
        dm.stage_start_from(str(tmp_path / "work_refused"), out)
    work2 = str(tmp_path / "work2")
    data2 = dm.stage_data(work2, n_train=6, n_heldout=4)
    taken = dm.stage_start_from(work2, annealed_out)
    copy = os.path.join(work2, "start_from")
    assert taken["pipeline"] == copy and taken["taken_from"] == copy and taken["steps"] == 2
    assert dm.stage_vae(work2, data2, steps=99)["wall_s"] == vae["wall_s"]  # a taken stage is not run again
    assert dm.stage_vae(work2, data2, steps=99, stage="vae_decoder")["in_pipeline"] is True
    focus_data2 = dm.stage_focus_data(work2, n_train=4)
    went_on = dm.stage_ocr(
        work2, data2, focus_data2, taken, steps=1, extra_args=one_quick_step, loss_beta=0.3, step_weight=False
    )
    assert f"--pretrained_model_name_or_path {copy}" in went_on["command"]  # its VAE has the tuned decoder
    assert "--loss_beta 0.3 --no-with_step_weight" in went_on["command"]
    assert (went_on["loss_alpha"], went_on["loss_beta"], went_on["step_weight"]) == (dm.OCR_LOSS_WEIGHT, 0.3, False)
    out2 = str(tmp_path / "export2")
    dm.stage_export(work2, went_on["pipeline"], out2)
    card2 = open(os.path.join(out2, "README.md"), encoding="utf-8").read()
    assert '"taken_from": "<work_dir>/start_from"' in card2 and "`--start_from`" in card2
    assert "--ocr_steps 1 --ocr_restarts 0 --ocr_loss_alpha 0.03 --ocr_loss_beta 0.3 --no-ocr_step_weight\n" in card2
    assert work2 not in card2  # (the export's own out_dir is outside it)
    with pytest.raises(ValueError, match="no record of the stages"):
        dm.stage_start_from(str(tmp_path / "work3"), str(tmp_path / "work2" / "ocr"))
    # From an export whose last loop stage is ocr: that stage is taken too, and its first restart goes on from the
    # copy with the ocr record's loss settings.
    work4 = str(tmp_path / "work4")
    data4 = dm.stage_data(work4, n_train=6, n_heldout=4)
    taken = dm.stage_start_from(work4, export_without(["ocr2", "ocr3"]))
    copy = os.path.join(work4, "start_from")
    assert taken["stage"] == "ocr" and taken["pipeline"] == copy and taken["taken_from"] == copy
    assert dm.stage_ocr(work4, data4, None, None)["pipeline"] == copy  # taken: not run again
    assert dm.stage_anneal(work4, None, None, None)["pipeline"] != copy  # the copy is the ocr stage's result
    focus_data4 = dm.stage_focus_data(work4, n_train=4)
    went_on = dm.stage_ocr_restart(work4, data4, focus_data4, taken, taken, 1, 1, extra_args=one_quick_step)
    assert (
        f"--pretrained_model_name_or_path {copy}" in went_on["command"]
        and "--no-with_step_weight" in went_on["command"]
    )
    assert dm.stage_vae(work, data, steps=99) == vae  # a finished stage is skipped, not re-run

    fast = ["--train_batch_size", "2", "--validation_num_inference_steps", "2", "--report_to", "none"]
    check = dm.learning_check(work, data, trained["pipeline"], steps=1, eval_steps=2, limit=2, extra_args=fast)
    assert check["before"]["lines"] == check["after"]["lines"] == 2
    root = os.path.join(work, "learning_check")
    run_dir = os.path.join(root, "run")  # one output folder on the command line
    assert check["command"].count("--output_dir") == 1 and f"--output_dir {run_dir} " in check["command"]
    zero_convs = ("controlnet_down_blocks.", "controlnet_mid_block.")

    def writenet_out(folder):
        weights = load_file(os.path.join(folder, "controlnet", "diffusion_pytorch_model.safetensors"))
        return torch.cat([w.flatten() for k, w in weights.items() if k.startswith(zero_convs)])

    assert not writenet_out(os.path.join(root, "start")).any()  # the check starts with WriteNet silenced
    assert writenet_out(os.path.join(root, "run")).abs().max() > 0  # and the loop's one step reaches it


@pytest.mark.filterwarnings("ignore")
def test_init_stage_follows_the_vae_latent_channels_through_unet_and_writenet(tmp_path):
    # A 16-channel VAE: the UNet's in/out and WriteNet's noisy- and masked-latent inputs must follow it, else the
    # pipeline would fail at the first conv (or, worse, a 4-channel slice would be silently fed).
    from diffusers import AutoencoderKL

    from anytext2_diffusers.evaluation.generate import load_pipeline
    from anytext2_diffusers.testing import quick_generate

    work = str(tmp_path / "work")
    data = dm.stage_data(work, n_train=4, n_heldout=2)
    AutoencoderKL(**vae_config(dataclasses.replace(_vae_config(tmp_path, 1), latent_channels=16))).save_pretrained(
        os.path.join(work, "vae", "vae")
    )
    init = dm.stage_init(work, data)
    assert init["latent_channels"] == 16
    pipe = load_pipeline(init["pipeline"], "no", "cpu")
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 16
    assert pipe.controlnet.config.in_channels == pipe.controlnet.config.masked_latent_channels == 16
    # As the VAE's: no GroupNorm of the UNet or of WriteNet (its copy) normalises single channels.
    for model in (pipe.unet, pipe.controlnet):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and min(m.num_channels // m.num_groups for m in norms) >= 4, type(model).__name__
    latents = quick_generate(pipe, size=64, steps=1)
    assert latents.shape == (1, 16, 8, 8) and torch.isfinite(latents).all()


def test_vae_pixel_loss_is_mse_by_default_and_l1_on_request():
    from diffusers import AutoencoderKL

    from anytext2_diffusers.training.vae import vae_loss

    config = dataclasses.replace(_vae_config("unused", 1), edge_weight=0.0, kl_weight=0.0)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config(config))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(5))).sample
        mse = vae_loss(vae, x, config, torch.Generator().manual_seed(5))
        l1 = vae_loss(vae, x, dataclasses.replace(config, pixel_loss="l1"), torch.Generator().manual_seed(5))
    assert config.pixel_loss == "mse"
    torch.testing.assert_close(mse["loss"], torch.nn.functional.mse_loss(recon, x))
    torch.testing.assert_close(l1["loss"], torch.nn.functional.l1_loss(recon, x))
    assert not torch.allclose(mse["loss"], l1["loss"])
    with pytest.raises(ValueError, match="pixel_loss must be 'mse' or 'l1', got 'l2'"):
        vae_loss(vae, x, dataclasses.replace(config, pixel_loss="l2"), torch.Generator().manual_seed(5))


def test_glyph_dependence_is_zero_for_a_fresh_writenet_and_sees_its_residuals(tmp_path):
    # A fresh WriteNet's output convs are zero: with or without its residuals the prediction is the same, so the
    # probe must report equal errors; once those convs are non-zero the in-line errors must differ.
    from _training_helpers import make_data, save_small_recognizer, tiny_config

    from anytext2_diffusers.training.components import load_components

    data = make_data(str(tmp_path / "data"), 4, seed=1)
    config = tiny_config(
        str(tmp_path / "out"), data, save_small_recognizer(str(tmp_path / "ocr")), validation_data=[data]
    )
    parts = load_components(config)
    fresh = dm.glyph_dependence(parts, config, batches=1, timesteps=(500,))[500]
    assert fresh["text_on"] == fresh["text_off"] and fresh["rest_on"] == fresh["rest_off"]
    assert all(v > 0 for v in fresh.values())
    with torch.no_grad():
        for module in (*parts["controlnet"].controlnet_down_blocks, parts["controlnet"].controlnet_mid_block):
            for p in module.parameters():
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    changed = dm.glyph_dependence(parts, config, batches=1, timesteps=(500,))[500]
    assert changed["text_on"] != changed["text_off"]
    assert changed["text_off"] == fresh["text_off"]  # without the residuals nothing else changed
    # The one-step preview of the same model: the source column and one column per timestep, rows = images.
    grid = dm.denoised_previews(parts, config, parts["vae"], images=2, timesteps=(300, 900))
    size = config.resolution
    assert grid.shape == (3, 2 * size, 3 * size) and grid.abs().max() <= 1


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_clean_from_prediction_inverts_the_noising_for_the_exact_target(prediction_type):
    # Given the exact training target, the preview's x0 must be the clean latent the noise was added to.
    from diffusers import DDIMScheduler

    from anytext2_diffusers.training.losses import training_target

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for t in (50, 500, 950):
        steps = torch.full((2,), t, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, steps)
        clean = dm._clean_from_prediction(scheduler, noisy, training_target(scheduler, latents, noise, steps), t)
        # float32 rounding of the noising and its inverse: at t = 950 x0 = (x_t - ...) / sqrt(alpha) with
        # sqrt(alpha) ~ 0.08 scales ~1e-7 errors by ~12; 1e-4 leaves a margin of ~50x over that
        assert torch.allclose(clean, latents, atol=1e-4), (prediction_type, t)


def test_logged_wall_seconds_sums_each_runs_span_from_the_tensorboard_logs(tmp_path):
    """The model card's training time of a loop stage resumed across sessions: each run's first-to-last
    logged step, summed (the gap between the runs is not training)."""
    from torch.utils.tensorboard import SummaryWriter

    assert dm.logged_wall_seconds(str(tmp_path)) is None
    for run, (start, end) in enumerate(((1000.0, 1100.0), (5000.0, 5030.5))):
        with SummaryWriter(str(tmp_path / f"run{run}")) as writer:
            writer.add_scalar("t/loss", 1.0, 1, walltime=start)
            writer.add_scalar("t/loss", 0.5, 2, walltime=(start + end) / 2)
            writer.add_scalar("t/loss", 0.2, 3, walltime=end)
    assert dm.logged_wall_seconds(str(tmp_path)) == 130.5


def test_ocr_stage_flags_of_a_record_written_before_the_options():
    """A card's ocr record from before the loss settings were recipe options reproduces with what that stage ran."""
    assert dm.ocr_stage_flags({"steps": 1500}) == ["--ocr_loss_alpha 0.03", "--ocr_loss_beta 0.03"]
    record = {"steps": 9, "loss_alpha": 0.1, "loss_beta": 0.3, "step_weight": False}
    assert dm.ocr_stage_flags(record) == ["--ocr_loss_alpha 0.1", "--ocr_loss_beta 0.3", "--no-ocr_step_weight"]
    # a restart runs again with the settings of the ocr record it goes on from (a card names them once) ...
    assert dm.ocr_loss_settings(record) == {"loss_alpha": 0.1, "loss_beta": 0.3, "step_weight": False}
    assert dm.ocr_loss_settings({"steps": 1500}) == {"loss_alpha": 0.03, "loss_beta": 0.03, "step_weight": True}
    # ... unless it names its own CTC weight: the card's --ocr_restarts names it then
    restarts = [dict(stage="ocr2", steps=2400, loss_beta=0.3), dict(stage="ocr3", steps=2000, loss_beta=1.0)]
    assert dm.restarts_option(record, restarts) == "2400 2000:1.0" and dm.restarts_option(record, []) == "0"
    assert [dm.restart_stage(n) for n in (1, 2, 11)] == ["ocr2", "ocr3", "ocr12"]
    assert [dm.is_restart_stage(s) for s in ("ocr", "ocr1", "ocr2", "ocr12", "ocr_source", "ocr02")] == [
        False, False, True, True, False, False,
    ]  # fmt: skip


def test_recipe_script_refuses_ocr_restarts_without_an_ocr_stage(tmp_path):
    """The restarts go on from the ocr stage's pipeline: asked for without it (in either spelling), the script
    stops before any work; left to their default, they are skipped with the ocr stage."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "make_demo_model.py")

    def run(*options):
        args = [sys.executable, script, "--work_dir", str(tmp_path / "work"), *options]
        return subprocess.run(args, capture_output=True, text=True, timeout=300)

    for options in (["--ocr_restarts", "5", "5:0.3"], ["--ocr2_steps", "5"]):
        done = run("--ocr_steps", "0", *options)
        assert done.returncode == 2 and "--ocr_restarts run on from the ocr stage" in done.stderr, options
    done = run("--ocr_restarts", "5:x")
    assert done.returncode == 2 and "'5:x': expected STEPS or STEPS:CTC_WEIGHT" in done.stderr
    done = run("--ocr_restarts", "5", "--ocr2_steps", "5")
    assert done.returncode == 2 and "give one of them" in done.stderr
    assert not os.path.exists(tmp_path / "work")
    # --ocr_steps 0 alone (the reproduce line of a card from before the restarts) skips them too: no error
    done = run("--ocr_steps", "0", "--until", "data", "--n_train", "2")
    assert done.returncode == 0, done.stderr[-2000:]


def test_card_names_the_restarts_in_stage_order(tmp_path):
    """recipe.json keeps a stage's record where it last finished, so a restart finished again comes after a later
    one: the card's --ocr_restarts still lists them ocr2, ocr3, ..."""
    recipe = [
        dict(stage="focus", steps=9),
        dict(stage="ocr", steps=5, loss_alpha=0.03, loss_beta=0.03, step_weight=False),
        dict(stage="ocr3", steps=8, loss_alpha=0.03, loss_beta=0.3, step_weight=False),
        dict(stage="ocr2", steps=7, loss_alpha=0.03, loss_beta=0.03, step_weight=False),
    ]
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    card = dm.model_card(str(tmp_path))
    assert "--focus_steps 9 --ocr_steps 5 --ocr_restarts 7 8:0.3 --ocr_loss_alpha 0.03 --ocr_loss_beta 0.03" in card
