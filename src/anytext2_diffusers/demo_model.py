"""The recipe of the embedded demo model, stage by stage (``examples/make_demo_model.py`` runs it).

Stages, each resumable and skipped once its ``done.json`` exists in the work folder:

1. ``data``: synthetic AnyWord-format training data (random Latin strings, common-character Chinese
   strings; ``data.demo_words``) and a held-out set of 50 real words never drawn in training;
2. ``vae``: a tiny ``AutoencoderKL`` trained on those images (``training.vae``), scored by reading the
   held-out lines of its reconstructions with the suite's OCR evaluation;
3. ``unet``: the tiny UNet pretrained as plain text-to-image diffusion on that VAE's latents
   (``training.unet_pretrain``): the "SD1.5" that AnyText2 fine-tunes;
4. ``init``: a fresh AnyText2 pipeline folder: that VAE + that UNet + WriteNet copied from its encoder,
   new AttnX and text embedding (font branch reading with the glyph recognizer);
5. ``anytext2``: the suite's own training loop on it (``anytext2_diffusers.training.main``, resumed
   from its latest checkpoint); then ``focus_data`` + ``focus``: the same loop on clean-style images, and
   ``anneal``: the same again with the learning rate falling to 0;
6. ``vae_decoder``: the VAE's decoder trained further with its encoder frozen, so the latents the
   ``anytext2`` stage learned stay valid (needs only ``vae``: it can run beside ``anytext2``); the
   ``ocr``, ``eval`` and ``export`` stages use this decoder; ``ocr``: the loop on the clean-style images
   with AnyText2's OCR losses on (perceptual + CTC through that decoder and the PP-OCRv3 recognizer) and
   the learning rate falling to 0;
7. ``eval``: generate each held-out word at a fixed box and read it back with the OCR evaluation;
8. ``export``: fp16 safetensors without the PP-OCRv3 recognizer (``demo_pipeline`` converts the one
   rapidocr ships at load time) and a model card with the commands, steps, seeds and wall times.

Every stage appends what it ran to ``recipe.json``, which the model card reproduces. ``stage_start_from``
takes an exported model whose last loop stage is ``anneal`` as the result of every stage up to
``vae_decoder``, so a session can go on from it when the work folder that made it is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time

import torch

logger = logging.getLogger(__name__)

# The recipe's stage folders, in order (``examples/make_demo_model.py --until`` takes these names).
STAGES = (
    "data", "vae", "unet", "init", "anytext2", "focus_data", "focus", "anneal", "vae_decoder", "ocr",
    "ocr_restarts", "eval", "export",
)  # fmt: skip
# ``ocr_restarts`` stands for the warm restarts of the ocr stage, each in its own folder: ocr2, ocr3, ...
RESOLUTION = 128
# The recipe VAE's latent channels: at 128 px a 4-channel latent (SD's) cannot carry the letters (even the
# best linear 8 x 8-patch code of 4 channels reads no held-out Latin word; 16 channels read 0.63 of them,
# docs/demo_model.md). The UNet and WriteNet follow this count (``stage_init``).
LATENT_CHANNELS = 16
# What the tiny UNet predicts (the unet stage's scheduler; init saves it with the pipeline, so the loop and the
# sampler follow it). v, not SD1.5's epsilon: the tiny UNet's epsilon error at high noise, blown up by
# sqrt((1 - a_t) / a_t) (14x at t = 999), left its samples colour noise; with v the clean-latent error at
# t >= 800 was 2-13x smaller after half the steps (docs/demo_model.md, "The unet stage").
PREDICTION_TYPE = "v_prediction"
# GroupNorm groups of the recipe's UNet (and so of WriteNet, which copies its config). SD1.5's 32 groups are one
# channel per group on the tiny UNet's 32-channel levels: each channel of each sample normalised on its own, the
# setting that stalled the first VAE. With 8 the unet stage's loss reached at step 600 what 32 groups reached at
# step 1200, and its steps were ~20 % faster (docs/demo_model.md, "The unet stage").
UNET_NORM_GROUPS = 8
# Bound of the loop's OCR neck memo: ~10 KiB each, ~0.5 GB. The training set has ~8.6 k distinct glyph
# lines (text x font); font-hint crops rarely recur and pass through the LRU, so it keeps ~13 epochs of them
# (simulated glyph-line hit rate 0.98 by epoch 8 with 30 k, 0.70 with 10 k; docs/demo_model.md).
NECK_CACHE_ENTRIES = 50000
# Loop steps of the anytext2 stage (on the varied images): where the run behind the demo model moved on to
# the focus stage; and the focus stage's cap (a run is ended at checkpoint N with steps N).
ANYTEXT2_STEPS, FOCUS_STEPS = 6526, 20000
# The anneal stage: loop steps, and the learning rate that falls linearly from there to 0 (a third of the focus
# stage's constant 3e-4).
ANNEAL_STEPS, ANNEAL_LR = 2000, 1e-4
# The ocr stage: loop steps, the learning rate that falls linearly from there to 0, and the weight of both OCR
# losses (``--loss_alpha`` perceptual, ``--loss_beta`` CTC). 10x the paper's 0.003: on the tiny model at
# 0.003 the OCR terms were ~1 % of the diffusion loss (docs/demo_model.md, "The ocr stage").
OCR_STEPS, OCR_LR, OCR_LOSS_WEIGHT = 2000, 1e-4, 0.03
# Whether the OCR losses keep AnyText2's ``alphas_cumprod[t]`` factor (``--with_step_weight``). Off here: the
# factor is 0.04 at t = 800, where generation settles the strokes (docs/demo_model.md, "The ocr stage's loss
# settings"). The loop's default keeps the reference's factor.
OCR_STEP_WEIGHT = False
# The warm restarts of the ocr stage (stages ocr2, ocr3, ...): each runs the ocr stage's loop again from the one
# before with the learning rate restarted, for (loop steps, CTC weight; None: the ocr stage's). The shipped
# model's, a session's run on 2 cores each: 2400 at the ocr stage's weight, then 2000 at 10x its CTC weight,
# which raised Latin NED from 0.63 to 0.78 (docs/demo_model.md, "The ocr2 stage", "The ocr3 stage").
OCR_RESTARTS = ((2400, None), (2000, 0.3))
# Classifier-free guidance scale of the recipe's evaluation (eval stage, learning check, checkpoint scores). Not
# SD's 7.5: AnyText2's loop never drops the caption, so the unconditional branch (negative prompt, empty text
# caption) is one the model was not trained on, and a large scale pushes the image away from it. On the focus
# stage's checkpoint 9700, 12 held-out Latin words read NED 0.15 at 7.5, 0.36 at 3 and 0.35 at 1 (no CFG); 3 keeps
# more contrast than 1 (docs/demo_model.md, "Guidance scale").
EVAL_GUIDANCE = 3.0
# One horizontal line across the middle, on the evaluation's 512 px polygon canvas (8..120 x 40..88 at 128 px).
HELDOUT_BOX = ((32, 160), (480, 160), (480, 352), (32, 352))


def _done(work: str, stage: str) -> dict | None:
    path = os.path.join(work, stage, "done.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def _finish(work: str, stage: str, record: dict) -> dict:
    record = json.loads(json.dumps(dict(stage=stage, **record)))  # as a later session reads it back
    os.makedirs(os.path.join(work, stage), exist_ok=True)
    with open(os.path.join(work, stage, "done.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)
    recipe_path = os.path.join(work, "recipe.json")
    recipe = []
    if os.path.isfile(recipe_path):
        with open(recipe_path, encoding="utf-8") as f:
            recipe = [r for r in json.load(f) if r["stage"] != stage]
    recipe.append(record)
    with open(recipe_path, "w", encoding="utf-8") as f:
        json.dump(recipe, f, ensure_ascii=False, indent=1)
    return record


# --- 1. data ------------------------------------------------------------------------------------
def heldout_benchmark(path: str) -> str:
    """An AnyWord-format JSON with one entry per held-out word at ``HELDOUT_BOX`` (no images: generation input)."""
    from .data.demo_words import HELDOUT_WORDS
    from .evaluation.ocr_eval import infer_language

    entries = [
        {
            "img_name": f"heldout_{i:03d}.jpg",
            "caption": "a sign with the words *",
            "annotations": [
                {"polygon": [list(p) for p in HELDOUT_BOX], "text": w, "language": infer_language(w), "valid": True}
            ],
        }
        for i, w in enumerate(HELDOUT_WORDS)
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"data_root": "imgs", "data_list": entries}, f, ensure_ascii=False)
    return path


def stage_data(work: str, n_train: int = 4000, n_heldout: int = 100, seed: int = 0) -> dict:
    """Training images (seed ``seed``) and held-out-word images (seed ``seed + 1``, for the VAE score)."""
    done = _done(work, "data")
    if done:
        return done
    from .data.demo_words import make_word_data

    start = time.perf_counter()
    root = os.path.join(work, "data")
    train = make_word_data(os.path.join(root, "train"), n_train, seed, RESOLUTION)
    heldout = make_word_data(os.path.join(root, "heldout_images"), n_heldout, seed + 1, RESOLUTION, heldout=True)
    bench = heldout_benchmark(os.path.join(root, "heldout_words.json"))
    return _finish(
        work,
        "data",
        dict(
            train=train,
            heldout_images=heldout,
            heldout_words=bench,
            n_train=n_train,
            n_heldout=n_heldout,
            seed=seed,
            resolution=RESOLUTION,
            wall_s=round(time.perf_counter() - start, 1),
        ),
    )


# --- 2. vae -------------------------------------------------------------------------------------
def ocr_reader():
    """The evaluation's PP-OCRv3 reader on rapidocr's recognizer (converted once per process)."""
    from .evaluation.ocr_eval import PPOCRReader
    from .testing import rapidocr_recognizer

    return PPOCRReader(rapidocr_recognizer())


def score_images(images, benchmark_json: str, out_dir: str, reader=None) -> dict:
    """Write uint8 (N,3,H,W) images as the benchmark's ``{stem}_0.jpg`` and score them with ``evaluate_ocr``."""
    from PIL import Image

    from .evaluation.benchmark import load_benchmark
    from .evaluation.ocr_eval import evaluate_ocr

    items = load_benchmark(benchmark_json)
    with open(benchmark_json, encoding="utf-8") as f:
        names = [r["img_name"] for r in json.load(f)["data_list"]]
    os.makedirs(out_dir, exist_ok=True)
    for name, img in zip(names, images):
        stem = os.path.splitext(name)[0]
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(out_dir, f"{stem}_0.jpg"), quality=95)
    summary, scores = evaluate_ocr(out_dir, items, reader or ocr_reader(), num_samples=1, canvas_size=None)
    return summary


def vae_config_for(work: str, data: dict, steps: int, seed: int = 0, stage: str = "vae"):
    """The VAE stage's training config; ``stage="vae_decoder"``: the decoder-only continuation from its result."""
    from .training.vae import VAETrainingConfig

    config = VAETrainingConfig(
        output_dir=os.path.join(work, stage),
        train_data=[data["train"]],
        max_train_steps=steps,
        seed=seed,
        latent_channels=LATENT_CHANNELS,
    )
    if stage == "vae_decoder":
        config.init_from, config.train_encoder = os.path.join(work, "vae", "vae"), False
        config.seed = seed + 1  # other crops than the first stage's
    elif stage != "vae":
        raise ValueError(f"stage must be 'vae' or 'vae_decoder', got {stage!r}")
    return config


def stage_vae(work: str, data: dict, steps: int = 3000, seed: int = 0, stage: str = "vae") -> dict:
    """Train the VAE (``stage="vae"``) or continue its decoder alone (``"vae_decoder"``), then read the
    held-out lines of the originals and of the reconstructions."""
    done = _done(work, stage)
    if done:
        return done
    if stage == "vae_decoder" and not _done(work, "vae"):
        raise RuntimeError("the vae_decoder stage continues the vae stage's VAE: run the vae stage first")
    from .training.vae import load_images, reconstruct, train_vae

    config = vae_config_for(work, data, steps, seed, stage)
    result = train_vae(config)
    held = load_images([data["heldout_images"]], RESOLUTION)
    reader = ocr_reader()
    original = score_images(held, data["heldout_images"], os.path.join(work, stage, "eval_original"), reader)
    recon = reconstruct(result["vae"], held)
    rebuilt = score_images(recon, data["heldout_images"], os.path.join(work, stage, "eval_reconstructed"), reader)
    return _finish(
        work,
        stage,
        dict(
            steps=result["steps"],
            wall_s=result["wall_s"],
            seed=config.seed,
            config={k: v for k, v in vars(config).items() if k != "train_data"},
            ocr_original=_short(original),
            ocr_reconstructed=_short(rebuilt),
        ),
    )


def _short(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("images", "benchmark")}


# --- 3. unet --------------------------------------------------------------------------------------
def _recipe_vae(work: str, data: dict, seed: int, scaling: float | None = None):
    """The vae stage's VAE with its ``scaling_factor`` set from 256 training images (SD's rule), or to
    ``scaling`` when an earlier stage already measured it (the factor the UNet was trained with)."""
    from diffusers import AutoencoderKL

    from .training.vae import latent_scaling_factor, load_images

    vae = AutoencoderKL.from_pretrained(os.path.join(work, "vae", "vae")).eval()
    if scaling is None:
        scaling = round(latent_scaling_factor(vae, load_images([data["train"]], RESOLUTION, limit=256), seed), 5)
    vae.register_to_config(scaling_factor=scaling)
    return vae


def stage_unet(
    work: str,
    data: dict,
    steps: int = 4000,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    prediction_type: str = PREDICTION_TYPE,
) -> dict:
    """Pretrain the tiny UNet as plain text-to-image diffusion on the VAE's latents (``training.unet_pretrain``):
    the SD1.5 that AnyText2 fine-tunes, made here. Its text encoder is ``tiny_components(seed)``' (frozen and
    random), the same one the init stage gives the AnyText2 model."""
    done = _done(work, "unet")
    if done:
        return done
    from .testing import tiny_components
    from .training.unet_pretrain import UNetPretrainConfig, pretrain_unet

    vae = _recipe_vae(work, data, seed)
    parts = dict(tiny_components(seed, vae.config.latent_channels, UNET_NORM_GROUPS), vae=vae)
    parts["scheduler"].register_to_config(prediction_type=prediction_type)
    config = UNetPretrainConfig(
        output_dir=os.path.join(work, "unet"),
        train_data=[data["train"]],
        resolution=RESOLUTION,
        batch_size=batch_size,
        max_train_steps=steps,
        seed=seed,
        device=device,
    )
    result = pretrain_unet(config, parts)
    with open(os.path.join(config.output_dir, "log.jsonl"), encoding="utf-8") as f:
        last = json.loads(f.read().splitlines()[-1])
    record = dict(
        unet=os.path.join(config.output_dir, "unet"),
        steps=result["steps"],
        wall_s=result["wall_s"],
        final_loss=last["loss"],
        prediction_type=prediction_type,
        norm_num_groups=parts["unet"].config.norm_num_groups,
        vae_scaling_factor=vae.config.scaling_factor,
        config={k: v for k, v in vars(config).items() if k != "train_data"},
    )
    return _finish(work, "unet", record)


# --- 4. init -------------------------------------------------------------------------------------
def stage_init(work: str, data: dict, unet: dict | None = None, seed: int = 0) -> dict:
    """The fresh AnyText2 pipeline folder the loop starts from, built as ``--from_sd15`` builds one from SD1.5:
    the trained VAE, the pretrained UNet of the unet stage (``unet``; None: a random one), WriteNet copied from
    its encoder, new AttnX and text embedding."""
    done = _done(work, "init")
    if done:
        return done
    from diffusers import UNet2DConditionModel

    from .testing import tiny_components
    from .training.components import new_anytext2_parts
    from .training.config import TrainingConfig
    from .training.output import save_pipeline_folder

    # The font branch reads with the (frozen, pretrained) glyph recognizer instead of a trainable copy:
    # both recognizers then stay the PP-OCRv3 weights rapidocr ships and the model need not carry them.
    config = TrainingConfig(tiny_model=True, seed=seed, train_font_ocr=False)
    # The factor the unet stage trained with (measured there once), else measured here.
    vae = _recipe_vae(work, data, seed, None if unet is None else unet.get("vae_scaling_factor"))
    # The UNet's in/out and WriteNet's masked-latent channels follow the trained VAE's latent channels.
    base = tiny_components(seed, vae.config.latent_channels, UNET_NORM_GROUPS)
    if unet is not None:
        base["unet"] = UNet2DConditionModel.from_pretrained(unet["unet"]).eval()
        base["scheduler"].register_to_config(prediction_type=unet.get("prediction_type", "epsilon"))
    parts = new_anytext2_parts(base, config)
    parts["vae"] = vae
    folder = os.path.join(work, "init", "pipeline")
    save_pipeline_folder(parts, folder)
    record = dict(
        pipeline=folder,
        seed=seed,
        tiny_model=True,
        train_font_ocr=False,
        pretrained_unet=None if unet is None else unet["unet"],
        prediction_type=base["scheduler"].config.prediction_type,
        latent_channels=vae.config.latent_channels,
        vae_scaling_factor=vae.config.scaling_factor,
    )
    return _finish(work, "init", record)


# --- 5. anytext2 ---------------------------------------------------------------------------------
def anytext2_args(
    work: str, data: dict, steps: int, init: dict, stage: str = "anytext2", train_data: str | None = None
) -> list[str]:
    """The command line of the suite's loop for this stage (``anytext2-train`` takes the same); ``stage``
    names the output folder, ``train_data`` replaces the data stage's training images."""
    return [
        "--pretrained_model_name_or_path", init["pipeline"],
        "--train_data", train_data or data["train"],
        # The held-out-word images: the loop's validation grids (every 500 steps) show them being written.
        "--validation_data", data["heldout_images"],
        "--output_dir", os.path.join(work, stage),
        "--resolution", str(RESOLUTION),
        "--max_lines", "3",
        "--no-sd_locked",
        "--no-train_font_ocr",
        "--train_batch_size", "8",
        "--gradient_accumulation_steps", "1",
        "--learning_rate", "3e-4",
        "--max_train_steps", str(steps),
        "--checkpointing_steps", "100",
        "--checkpoints_total_limit", "2",
        "--validation_steps", "500",
        "--num_validation_images", "2",
        "--max_validation_batches", "1",
        "--validation_num_inference_steps", "20",
        "--mixed_precision", "no",
        # Speed only (docs/demo_model.md, "Cost on CPU"): the clean images' VAE posteriors and the frozen
        # recognizer's necks are kept after their first computation; the loss is unchanged up to float rounding.
        "--cache_latents",
        "--cache_ocr_necks", str(NECK_CACHE_ENTRIES),
        "--report_to", "tensorboard",
        "--resume_from_checkpoint", "latest",
        "--seed", "0",
    ]  # fmt: skip


def stage_anytext2(work: str, data: dict, init: dict, steps: int = ANYTEXT2_STEPS, extra_args=()) -> dict:
    """Run (or resume) the loop to ``steps``; the stage is done when the loop's output folder is complete.
    ``extra_args``: loop options appended to (so overriding) the recipe's."""
    done = _done(work, "anytext2")
    if done:
        return done
    args = anytext2_args(work, data, steps, init) + list(extra_args)
    return _run_loop_stage(work, "anytext2", args, steps)


def _run_loop_stage(work: str, stage: str, args: list[str], steps: int, settings=None) -> dict:
    """Run (or resume) the suite's loop with ``args``; the stage is done when its output folder is complete."""
    from .training import main as train_main

    start = time.perf_counter()
    code = train_main(args)
    if code != 0:
        raise RuntimeError(f"the {stage} training stage exited with {code}; resume by running the recipe again")
    out = os.path.join(work, stage)
    if not os.path.isfile(os.path.join(out, "model_index.json")):  # interrupted (SIGTERM): a checkpoint was saved
        raise SystemExit(f"the {stage} stage was interrupted; run the recipe again to resume from its checkpoint")
    return _finish(
        work,
        stage,
        dict(
            command="anytext2-train " + " ".join(args),
            steps=steps,
            wall_s_this_session=round(time.perf_counter() - start, 1),
            pipeline=out,
            **(settings or {}),
        ),
    )


# --- 5b. focus_data + focus -----------------------------------------------------------------------
def stage_focus_data(work: str, n_train: int = 4000, seed: int = 2) -> dict:
    """Clean-style training images (``synth.make_demo_data(style="clean")``: plain gradients, horizontal
    lines in a contrasting colour, all valid, 1-3 per image) from the training pools of ``seed``."""
    done = _done(work, "focus_data")
    if done:
        return done
    from .data.demo_words import make_word_data

    start = time.perf_counter()
    train = make_word_data(os.path.join(work, "focus_data", "train"), n_train, seed, RESOLUTION, style="clean")
    record = dict(train=train, n_train=n_train, seed=seed, style="clean", wall_s=round(time.perf_counter() - start, 1))
    return _finish(work, "focus_data", record)


def stage_focus(
    work: str, data: dict, focus_data: dict, trained: dict, steps: int = FOCUS_STEPS, extra_args=()
) -> dict:
    """The loop run on from the anytext2 stage's pipeline (``trained``) on the clean-style images, with the
    anytext2 stage's options (a fresh optimizer): letters are most of what is left to predict there, so the
    glyph conditioning gets the gradient (docs/demo_model.md, "The focus stage")."""
    return _clean_images_stage(work, "focus", data, focus_data, trained, steps, list(extra_args))


def _clean_images_stage(
    work: str, stage: str, data: dict, focus_data: dict, source: dict, steps: int, extra, settings=None
):
    """The recipe's loop command run on from ``source``'s pipeline on the clean-style images (a fresh
    optimizer), output ``<work>/<stage>``; skipped once done. ``settings``: recipe options kept in the record."""
    done = _done(work, stage)
    if done:
        return done
    args = anytext2_args(work, data, steps, {"pipeline": source["pipeline"]}, stage, focus_data["train"])
    return _run_loop_stage(work, stage, args + extra, steps, settings)


def stage_anneal(
    work: str, data: dict, focus_data: dict, focused: dict, steps: int = ANNEAL_STEPS, extra_args=()
) -> dict:
    """The focus stage's loop run on from its pipeline (``focused``) with the learning rate falling linearly
    from ``ANNEAL_LR`` to 0 over ``steps`` (a fresh optimizer): at the constant 3e-4 the weights keep moving
    and the words read differently from one checkpoint to the next (docs/demo_model.md, "The anneal stage")."""
    extra = _falling_learning_rate(ANNEAL_LR) + list(extra_args)
    return _clean_images_stage(work, "anneal", data, focus_data, focused, steps, extra)


def _falling_learning_rate(start: float) -> list[str]:
    """Loop options: the learning rate falls linearly from ``start`` to 0 over the stage's steps."""
    return ["--learning_rate", str(start), "--lr_scheduler", "linear", "--lr_warmup_steps", "0"]


def stage_ocr(
    work: str,
    data: dict,
    focus_data: dict,
    annealed: dict,
    steps: int = OCR_STEPS,
    extra_args=(),
    loss_alpha: float = OCR_LOSS_WEIGHT,
    loss_beta: float = OCR_LOSS_WEIGHT,
    step_weight: bool = OCR_STEP_WEIGHT,
) -> dict:
    """The loop run on from the anneal stage's pipeline (``annealed``, with the ``vae_decoder`` stage's VAE put
    in: the OCR losses read what that decoder draws) on the clean-style images, with AnyText2's OCR
    perceptual (``loss_alpha``) and CTC (``loss_beta``) losses on and the learning rate falling linearly from
    ``OCR_LR`` to 0 (a fresh optimizer): a gradient towards what the recognizer reads, not only towards the
    pixels. ``step_weight=False`` drops AnyText2's ``alphas_cumprod[t]`` factor on those losses
    (``--no-with_step_weight``), so they also act at the high noise levels where sampling settles the strokes."""
    done = _done(work, "ocr")
    if done:
        return done
    source = annealed["pipeline"]
    decoder = _done(work, "vae_decoder")
    if decoder and not decoder.get("in_pipeline"):
        source = os.path.join(work, "ocr_source")
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            pipe = load_recipe_pipeline(annealed["pipeline"])
            use_final_decoder(work, pipe)
            pipe.save_pretrained(source, safe_serialization=True)
    return _ocr_losses_stage(
        work, "ocr", data, focus_data, source, steps, extra_args, loss_alpha, loss_beta, step_weight
    )


def restart_stage(number: int) -> str:
    """The folder (and record) name of the ocr stage's ``number``-th warm restart, from 1: ocr2, ocr3, ..."""
    return f"ocr{number + 1}"


_RESTART_STAGE = re.compile(r"ocr(?:[2-9]|[1-9]\d+)")


def is_restart_stage(stage: str) -> bool:
    return _RESTART_STAGE.fullmatch(stage) is not None


def restart_number(stage: str) -> int:
    """The inverse of ``restart_stage``: ocr2 -> 1, ocr3 -> 2, ..."""
    if not is_restart_stage(stage):
        raise ValueError(f"{stage!r} is not a restart stage of the ocr stage (ocr2, ocr3, ...)")
    return int(stage[len("ocr") :]) - 1


def stage_ocr_restart(
    work: str,
    data: dict,
    focus_data: dict,
    ocr: dict,
    previous: dict,
    number: int,
    steps: int,
    loss_beta: float | None = None,
    extra_args=(),
) -> dict:
    """The ocr stage's ``number``-th warm restart (stage ``restart_stage(number)``): its loop run again from the
    ``previous`` stage's pipeline (the ocr stage's or the last restart's) with the ocr record's loss settings,
    the CTC weight replaced by ``loss_beta`` when given, and the learning rate restarted at ``OCR_LR``, falling
    to 0 over ``steps`` (a fresh optimizer). The OCR training goes on past a stage that ended at learning rate 0
    without rerunning it, one session's run at a time (docs/demo_model.md, "The ocr2 stage")."""
    stage = restart_stage(number)
    done = _done(work, stage)
    if done:
        return done
    settings = ocr_loss_settings(ocr)
    if loss_beta is not None:
        settings["loss_beta"] = loss_beta
    return _ocr_losses_stage(work, stage, data, focus_data, previous["pipeline"], steps, extra_args, **settings)


def _ocr_losses_stage(work, stage, data, focus_data, source, steps, extra_args, loss_alpha, loss_beta, step_weight):
    """The recipe's loop on the clean-style images from ``source`` with the OCR losses on and the learning rate
    falling from ``OCR_LR`` to 0; the loss settings are kept in the stage record."""
    losses = ["--loss_alpha", str(loss_alpha), "--loss_beta", str(loss_beta)]
    losses += [] if step_weight else ["--no-with_step_weight"]
    extra = _falling_learning_rate(OCR_LR) + losses + list(extra_args)
    settings = dict(loss_alpha=loss_alpha, loss_beta=loss_beta, step_weight=step_weight)
    return _clean_images_stage(work, stage, data, focus_data, {"pipeline": source}, steps, extra, settings)


def load_recipe_pipeline(folder: str):
    """A recipe pipeline folder in float32 on the CPU; an exported one (no ``ocr`` folder) gets rapidocr's
    PP-OCRv3 recognizer, as ``demo_pipeline`` does."""
    from .evaluation.generate import load_pipeline
    from .testing import demo_pipeline

    if os.path.isdir(os.path.join(folder, "ocr")):
        return load_pipeline(folder, "no", "cpu")
    return demo_pipeline(folder=folder)


# The stages an exported model stands for (``stage_start_from``): every one its card records up to vae_decoder,
# and the ocr stage when it records one (the recipe goes on with its restarts).
_TAKEN_STAGES = ("vae", "unet", "init", "anytext2", "focus", "anneal", "vae_decoder")
_TAKEN_IF_RECORDED = ("ocr",)
# A card that records a training stage after those (a restart of the ocr stage, ``is_restart_stage``) is refused:
# the recipe would run it again on top of the trained weights, and the new card would report one run of it.


def records_from_card(card: str) -> list[dict]:
    """The stage records a model card was written from (``model_card``: one ``## <stage>`` heading and one
    JSON block each), in order."""
    found = re.findall(r"^## (\w+)\n\n```json\n(.*?)\n```$", card, flags=re.M | re.S)
    records = [json.loads(body) for _, body in found]
    for (heading, _), record in zip(found, records):
        if record.get("stage") != heading:
            raise ValueError(f"model card: the record under '## {heading}' is for stage {record.get('stage')!r}")
    return records


def stage_start_from(work: str, exported: str) -> dict:
    """Take an exported demo model (``exported``: one whose last loop stage is ``anneal`` or ``ocr``) as the
    result of the stages its card records up to that one: it is copied to ``<work>/start_from`` (the next export
    may overwrite the package's folder), and the records of those stages are read from its card and marked
    ``taken_from``; the last one's pipeline is the copy, whose VAE already has the tuned decoder. The data
    stages still run here (they are seeded, so they draw the same images). Returns the last taken record."""
    import shutil

    copy = os.path.join(work, "start_from")
    if not _done(work, "anneal"):
        card_path = os.path.join(exported, "README.md")
        if not os.path.isfile(card_path):
            raise FileNotFoundError(f"{card_path}: an exported demo model has a model card with its stage records")
        with open(card_path, encoding="utf-8") as f:
            records = {r["stage"]: r for r in records_from_card(f.read())}
        missing = [stage for stage in _TAKEN_STAGES if stage not in records]
        if missing:
            raise ValueError(f"{card_path}: no record of the stages {missing}; it is not a complete demo model")
        later = [stage for stage in records if is_restart_stage(stage)]
        if later:
            raise ValueError(
                f"{card_path}: the card records the {later} stage(s), which the recipe would run again on top of "
                "them; start from a model exported after the anneal or the ocr stage (docs/demo_model.md, 'Recipe')"
            )
        if os.path.isdir(copy):
            shutil.rmtree(copy)
        shutil.copytree(exported, copy)
        taken = list(_TAKEN_STAGES) + [stage for stage in _TAKEN_IF_RECORDED if stage in records]
        last_loop_stage = "ocr" if "ocr" in records else "anneal"
        for stage in taken:
            record = {k: v for k, v in records[stage].items() if k != "stage"}
            record["taken_from"] = copy
            if stage == last_loop_stage:
                record["pipeline"] = copy
            if stage == "vae_decoder":
                record["in_pipeline"] = True
            _finish(work, stage, record)
    return _done(work, "ocr") or _done(work, "anneal")


# --- 6. vae_decoder (stage_vae with stage="vae_decoder") -------------------------------------------
def use_final_decoder(work: str, pipe) -> str:
    """Put the ``vae_decoder`` stage's VAE (if that stage is done) into ``pipe``; returns which VAE it has.

    Its encoder must be the pipeline's, weight for weight (the latents the UNet learned); the pipeline's
    ``scaling_factor`` (set by ``init``) is kept."""
    decoder = _done(work, "vae_decoder")
    if not decoder:
        return "vae"
    if decoder.get("in_pipeline"):  # taken from an exported model (``stage_start_from``): already its VAE
        return "vae_decoder"
    from diffusers import AutoencoderKL

    folder = os.path.join(work, "vae_decoder", "vae")
    vae = AutoencoderKL.from_pretrained(folder).to(dtype=pipe.vae.dtype)
    ours = pipe.vae.state_dict()
    for name, weight in vae.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.")) and not torch.equal(weight, ours[name]):
            raise ValueError(f"{folder}: encoder weight {name} differs from the pipeline's (its latents would differ)")
    vae.register_to_config(scaling_factor=pipe.vae.config.scaling_factor)
    pipe.register_modules(vae=vae.eval())
    return "vae_decoder"


# --- 7. eval -------------------------------------------------------------------------------------
def generate_and_score(
    pipe,
    benchmark_json: str,
    out_dir: str,
    steps: int = 20,
    seed: int = 100,
    reader=None,
    limit: int | None = None,
    guidance_scale: float = EVAL_GUIDANCE,
) -> dict:
    """``anytext2-eval generate`` + ``anytext2-eval ocr`` on one pipeline object, at the demo resolution."""
    from .evaluation.generate import GenerateConfig, generate_benchmark

    config = GenerateConfig(
        benchmark=benchmark_json, output_dir=out_dir, num_samples=1, resolution=RESOLUTION,
        num_inference_steps=steps, seed=seed, limit=limit, guidance_scale=guidance_scale,
    )  # fmt: skip
    with torch.no_grad():
        generate_benchmark(pipe, config)
    return read_back(out_dir, benchmark_json, reader, limit)


def read_back(images_dir: str, benchmark_json: str, reader=None, limit: int | None = None) -> dict:
    """``anytext2-eval ocr`` of generated held-out words (the first ``limit``) with ``reader`` (default: the
    evaluation's PP-OCRv3): Sen.ACC / NED, all lines and per language."""
    from .evaluation.benchmark import load_benchmark
    from .evaluation.ocr_eval import evaluate_ocr

    items = load_benchmark(benchmark_json)[:limit]
    summary, _ = evaluate_ocr(images_dir, items, reader or ocr_reader(), num_samples=1)
    return _short(summary)


def stage_eval(work: str, data: dict, pipeline_dir: str, steps: int = 20, limit: int | None = None) -> dict:
    """The 50 held-out words generated by the trained pipeline, read back: Sen.ACC / NED per language."""
    done = _done(work, "eval")
    if done:
        return done
    pipe = load_recipe_pipeline(pipeline_dir)
    vae = use_final_decoder(work, pipe)
    start = time.perf_counter()
    images = os.path.join(work, "eval", "images")
    summary = generate_and_score(pipe, data["heldout_words"], images, steps, limit=limit)
    record = dict(ocr=summary, steps=steps, vae=vae, wall_s=round(time.perf_counter() - start, 1))
    return _finish(work, "eval", record)


# --- 8. export ------------------------------------------------------------------------------------
def logged_wall_seconds(log_dir: str) -> float | None:
    """Wall seconds a loop stage trained, from its TensorBoard logs: per run (event file), the time from its
    first logged step to its last, summed over the runs that resumed it (pauses inside a run count; the time
    between runs does not). None without logs. The stage record's own ``wall_s_this_session`` covers only the
    last resumption."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        times = [e.wall_time for e in EventFileLoader(path).Load() if e.HasField("summary")]
        if times:
            total, found = total + max(times) - min(times), True
    return round(total, 1) if found else None


def model_card(work: str) -> str:
    with open(os.path.join(work, "recipe.json"), encoding="utf-8") as f:
        recipe = json.load(f)
    for record in recipe:  # the loop stages' training time over every session that resumed them
        logs = os.path.join(work, record["stage"], "logs")
        if "command" in record and os.path.isdir(logs):
            record["logged_wall_s"] = logged_wall_seconds(logs)
    lines = [
        # Hub metadata: trained from scratch here (no SD1.5 weights), so the weights carry the code's licence, and
        # runs fine-tuned from them (``--demo``) read it from this card (``training.hub.card_license``).
        "---",
        "library_name: diffusers",
        "license: apache-2.0",
        "pipeline_tag: text-to-image",
        "tags:",
        "- anytext2",
        "- visual-text-generation",
        "---",
        "",
        "# AnyText2 demo model (tiny, 128 px)",
        "",
        "Trained from scratch by anytext2-diffusers' `examples/make_demo_model.py` on synthetic AnyWord-format",
        "data; the PP-OCRv3 recognizer is not included (`demo_pipeline()` converts the one rapidocr-onnxruntime",
        "ships). Stages, as run (commands, steps, seeds, wall times; paths relative to the recipe's work folder,",
        "where some stages may have run in an earlier folder of the same layout and been copied in).",
        "",
    ]
    steps = {r["stage"]: r["steps"] for r in recipe if "steps" in r}
    if "focus" in steps:  # the loop stages' lengths that differ from the script's caps and defaults
        args = [f"--{stage}_steps {steps[stage]}" for stage in ("anytext2", "focus", "anneal") if stage in steps]
        # The ocr stages are named even when skipped (0), so a later change of their defaults keeps the line true.
        ocr = next((r for r in recipe if r["stage"] == "ocr"), None)
        restarts = sorted((r for r in recipe if is_restart_stage(r["stage"])), key=lambda r: restart_number(r["stage"]))
        args += [f"--ocr_steps {steps.get('ocr', 0)}", f"--ocr_restarts {restarts_option(ocr, restarts)}"]
        if ocr:
            args += ocr_stage_flags(ocr)
        lines += ["Reproduce (CPU; every stage resumes when run again):", "", "```bash"]
        lines += [f"python examples/make_demo_model.py --work_dir demo-train {' '.join(args)}", "```", ""]
    if any("taken_from" in r for r in recipe):
        lines += [
            "The records marked `taken_from` were copied from the card of the exported (float16) model in that",
            "folder (`--start_from`); the stages after them started from its weights, upcast to float32.",
            "",
        ]
    for record in recipe:
        lines += [f"## {record['stage']}", "", "```json", json.dumps(record, ensure_ascii=False, indent=1), "```", ""]
    # The card ships with the model: the maker's folders are written as the names a reader reproduces them with.
    from .testing import demo_model_dir

    card = "\n".join(lines).replace(demo_model_dir(), "<package>/assets/demo_model")
    return portable_paths(card.replace(os.path.abspath(work), "<work_dir>"))


# The ocr stage's loss settings before they were recipe options (session 11): what a record without them ran.
_OCR_SETTINGS_BEFORE_OPTIONS = dict(loss_alpha=0.03, loss_beta=0.03, step_weight=True)


def ocr_loss_settings(record: dict) -> dict:
    """The loss settings (``loss_alpha``, ``loss_beta``, ``step_weight``) the ocr stage ``record`` ran with."""
    return {k: record.get(k, v) for k, v in _OCR_SETTINGS_BEFORE_OPTIONS.items()}


def restarts_option(ocr: dict | None, restarts: list[dict]) -> str:
    """The value of ``make_demo_model.py --ocr_restarts`` that reruns the restart records ``restarts`` (in order)
    of the ocr stage ``ocr``: ``STEPS`` each, ``STEPS:CTC_WEIGHT`` where the weight is not the ocr stage's;
    ``0`` for none."""
    beta = ocr_loss_settings(ocr)["loss_beta"] if ocr else None
    values = restarts_value([(r["steps"], None if r["loss_beta"] == beta else r["loss_beta"]) for r in restarts])
    return " ".join(values) or "0"


def restarts_value(restarts) -> list[str]:
    """``--ocr_restarts`` values of (steps, CTC weight or None) pairs."""
    return [str(steps) + ("" if beta is None else f":{beta}") for steps, beta in restarts]


def ocr_stage_flags(record: dict) -> list[str]:
    """``make_demo_model.py`` options that rerun the ocr stage ``record`` describes (its loss settings; its
    restarts take the same, unless they name their own CTC weight)."""
    settings = ocr_loss_settings(record)
    flags = [f"--ocr_loss_alpha {settings['loss_alpha']}", f"--ocr_loss_beta {settings['loss_beta']}"]
    return flags + ([] if settings["step_weight"] else ["--no-ocr_step_weight"])


# An absolute path into a stage folder: a JSON string of its own, or a word of a recorded command line.
_STAGE_PATH = re.compile(
    r'(?<=["\s])/[^"\s]*?/(' + "|".join(STAGES + (_RESTART_STAGE.pattern,)) + r')((?:/[^"\s]*)?)(?=["\s])'
)


def portable_paths(text: str) -> str:
    """Absolute paths into a stage folder of *another* work folder (a stage finished in an earlier work folder
    and copied in, as every folder has the same layout) written as ``<work_dir>/<stage>/...``, also inside
    the recorded commands."""
    return _STAGE_PATH.sub(lambda m: f"<work_dir>/{m.group(1)}{m.group(2)}", text)


def drop_source_paths(folder: str) -> list[str]:
    """Remove the ``_name_or_path`` entries ``save_pretrained`` copies into every config (the folders the
    parts were loaded from: paths of the machine that made them, meaningless where the model is shipped).
    Returns the config files changed."""
    changed = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            if isinstance(config, dict) and "_name_or_path" in config:
                del config["_name_or_path"]
                with open(path, "w", encoding="utf-8") as f:
                    f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
                changed.append(os.path.relpath(path, folder))
    return changed


def stage_export(work: str, pipeline_dir: str, out_dir: str | None = None) -> dict:
    """fp16 safetensors of the pipeline without its recognizer folder, and the model card.

    ``out_dir`` None: the package's demo-model folder (``testing.demo_model_dir()``, what ``demo_pipeline``
    loads). ``model_index.json`` still names ``ocr``: load with ``from_pretrained(out_dir, ocr=recognizer)``."""
    import shutil

    from .testing import demo_model_dir

    out_dir = out_dir or demo_model_dir()
    pipe = load_recipe_pipeline(pipeline_dir)
    vae = use_final_decoder(work, pipe)
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    shutil.rmtree(os.path.join(out_dir, "ocr"), ignore_errors=True)
    drop_source_paths(out_dir)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs)
    record = _finish(work, "export", dict(out_dir=out_dir, bytes=size, dtype="float16", without="ocr", vae=vae))
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(work))
    return record


# --- the learning check ---------------------------------------------------------------------------
def zero_writenet_outputs(controlnet) -> None:
    """Zero WriteNet's output convolutions (the zero convs of a fresh WriteNet): its residuals become 0,
    so nothing of the glyphs reaches the UNet."""
    with torch.no_grad():
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            for p in module.parameters():
                p.zero_()


def learning_check(
    work: str, data: dict, pipeline_dir: str, steps: int, eval_steps: int = 20, limit=None, extra_args=()
):
    """From ``pipeline_dir`` with WriteNet's outputs zeroed (text unreadable), train ``steps`` with the suite's
    loop and read the held-out words before and after: the proof that loop, losses and pipeline learn.

    Trains on the images of the recipe's last loop stage (the focus stage's when it is done) and reads with
    the VAE the eval stage uses (``use_final_decoder``)."""
    from .training import main as train_main

    root = os.path.join(work, "learning_check")
    start_dir, run_dir = os.path.join(root, "start"), os.path.join(root, "run")
    pipe = load_recipe_pipeline(pipeline_dir)
    zero_writenet_outputs(pipe.controlnet)
    pipe.save_pretrained(start_dir)
    use_final_decoder(work, pipe)
    reader = ocr_reader()
    bench = data["heldout_words"]
    before = generate_and_score(pipe, bench, os.path.join(root, "before"), eval_steps, reader=reader, limit=limit)
    focus_data = _done(work, "focus_data")
    images = focus_data["train"] if _done(work, "focus") and focus_data else None
    stage = os.path.relpath(run_dir, work)  # the loop's output folder: <work>/learning_check/run
    args = anytext2_args(work, data, steps, dict(pipeline=start_dir), stage, images) + list(extra_args)
    started = time.perf_counter()
    if train_main(args) != 0:
        raise RuntimeError("the learning-check training run failed")
    wall = round(time.perf_counter() - started, 1)
    trained = load_recipe_pipeline(run_dir)
    use_final_decoder(work, trained)
    after = generate_and_score(trained, bench, os.path.join(root, "after"), eval_steps, reader=reader, limit=limit)
    return dict(command="anytext2-train " + " ".join(args), steps=steps, train_wall_s=wall, before=before, after=after)


def score_vae_checkpoint(work: str, data: dict, stage: str = "vae") -> dict:
    """OCR of the held-out lines reconstructed by the latest checkpoint of the ``vae`` or ``vae_decoder``
    stage (to follow a running stage)."""
    from diffusers import AutoencoderKL

    from .training.vae import CHECKPOINT, check_checkpoint_config, load_images, reconstruct, vae_config

    config = vae_config_for(work, data, 0, stage=stage)
    path = os.path.join(config.output_dir, CHECKPOINT)
    state = torch.load(path, map_location="cpu", weights_only=True)
    vae = AutoencoderKL(**vae_config(config))
    check_checkpoint_config(path, state, vae)
    vae.load_state_dict(state["model"])
    held = load_images([data["heldout_images"]], RESOLUTION)
    out = os.path.join(work, stage, f"eval_step{state['step']}")
    return dict(step=state["step"], ocr=score_images(reconstruct(vae.eval(), held), data["heldout_images"], out))


def checkpoint_components(ckpt: str) -> dict:
    """The trainable components a loop checkpoint holds (its ``save_pretrained`` folders), by pipeline name."""
    from diffusers import UNet2DConditionModel

    from .models import AnyText2AttnXModel, AnyText2ControlNetModel, AnyText2TextEmbeddingModel

    classes = dict(
        unet=UNet2DConditionModel,
        controlnet=AnyText2ControlNetModel,
        attnx=AnyText2AttnXModel,
        text_embedding=AnyText2TextEmbeddingModel,
    )
    return {
        name: cls.from_pretrained(os.path.join(ckpt, name)).eval()
        for name, cls in classes.items()
        if os.path.isdir(os.path.join(ckpt, name))
    }


def latest_anytext2_checkpoint(work: str, stage: str = "anytext2") -> str:
    """The newest complete loop checkpoint of a loop stage (``anytext2``, ``focus`` or ``anneal``)."""
    from .training.checkpointing import latest_checkpoint

    ckpt = latest_checkpoint(os.path.join(work, stage))
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint in {os.path.join(work, stage)}")
    return ckpt


def score_anytext2_checkpoint(
    work: str,
    data: dict,
    steps: int = 20,
    limit: int | None = None,
    stage: str = "anytext2",
    guidance_scale: float = EVAL_GUIDANCE,
) -> dict:
    """The held-out words generated by a loop stage's latest checkpoint, read back (to follow a running
    stage): the init pipeline with every component the checkpoint holds (``save_pretrained`` folders)
    swapped in. Images go to ``<stage>/eval_<checkpoint>_cfg<scale>``."""
    ckpt = latest_anytext2_checkpoint(work, stage)
    pipe = load_recipe_pipeline(_stage_source(work, stage))
    swapped = checkpoint_components(ckpt)
    if "attnx" in swapped and pipe.attnx.is_attached:
        pipe.attnx.detach()
    pipe.register_modules(**swapped)
    pipe.attach_attnx()
    vae = use_final_decoder(work, pipe)
    out = os.path.join(work, stage, f"eval_{os.path.basename(ckpt)}_cfg{guidance_scale:g}")
    summary = generate_and_score(pipe, data["heldout_words"], out, steps, limit=limit, guidance_scale=guidance_scale)
    return dict(
        checkpoint=os.path.basename(ckpt), components=list(swapped), vae=vae, sampler_steps=steps,
        guidance_scale=guidance_scale, ocr=summary,
    )  # fmt: skip


def _stage_source(work: str, stage: str) -> str:
    """The pipeline a loop stage's checkpoints complete (their four trained parts swapped in): the init stage's,
    whose VAE ``use_final_decoder`` then replaces; for ``ocr`` and its restarts, the folder that stage started
    from (a restart's: the stage before it)."""
    if is_restart_stage(stage):
        number = restart_number(stage)
        return _done(work, "ocr" if number == 1 else restart_stage(number - 1))["pipeline"]
    if stage != "ocr":
        return _done(work, "init")["pipeline"]
    source = os.path.join(work, "ocr_source")
    return source if os.path.isdir(source) else _done(work, "anneal")["pipeline"]


@contextlib.contextmanager
def checkpoint_probe(work: str, checkpoint: str | None = None, stage: str = "anytext2", images: str | None = None):
    """What the probes (``glyph_dependence``, ``denoised_previews``) read: yields (checkpoint folder, parts,
    config): the recipe's loop config with ``images`` (an AnyWord JSON; default the held-out-word images) as
    validation data, and its components with the loop checkpoint's swapped in (default: the stage's latest)."""
    import tempfile

    from .training.components import load_components
    from .training.config import parse_args

    data = stage_data(work)
    init = stage_init(work, data)
    ckpt = checkpoint or latest_anytext2_checkpoint(work, stage)
    with tempfile.TemporaryDirectory() as out:  # the config's output folder is never written
        extra = ["--output_dir", out] + (["--validation_data", images] if images else [])
        config = parse_args(anytext2_args(work, data, 1, init) + extra)
        parts = load_components(config)
        parts.update(checkpoint_components(ckpt))
        yield ckpt, parts, config


def _validation_batches(parts: dict, config, batches: int, seed: int):
    """The training model in eval mode and, per validation batch (at most ``batches``), its clean latents,
    masked latents, caption contexts and the batch itself: what ``glyph_dependence`` and
    ``denoised_previews`` predict from."""
    from .training.components import setup_training_model
    from .training.data import build_datasets, make_loader

    model, _ = setup_training_model(parts, config, torch.device("cpu"), torch.float32)
    model.eval()
    _, val = build_datasets(config)
    if val is None:
        raise ValueError("the demo model's probes need validation data (--validation_data)")
    generator = torch.Generator().manual_seed(seed)

    def batches_():
        for i, batch in enumerate(make_loader(val, config, shuffle=False)):
            if i == batches:
                return
            latents, masked = model.encode_images(batch, generator)
            image_context, text_context = model.encode_lines_and_captions(batch)
            yield batch, latents, masked, image_context, text_context

    return model, generator, batches_()


def _predict(model, batch, noisy, steps, masked, image_context, text_context, scales=None):
    from .training.step import predict_noise

    return predict_noise(
        model.unet, model.controlnet, noisy, steps, image_context, text_context,
        glyphs=batch.glyphs, positions=batch.position[:, :, 0], masked_latents=masked,
        only_mid_control=model.only_mid_control, attnx_scale=model.attnx_scale,
        control_scales=model.control_scales if scales is None else scales,
    )  # fmt: skip


@torch.no_grad()
def glyph_dependence(parts: dict, config, batches: int = 4, timesteps=(200, 500, 800), seed: int = 0) -> dict:
    """How much the model's prediction in the text lines comes from the glyph conditioning: per timestep, the
    training error (MSE to the scheduler's target per latent pixel) inside the lines' position masks and
    outside them, with WriteNet's residuals and with them scaled to 0 (nothing of the lines reaches the UNet:
    WriteNet alone reads them), on the same noise. A model that writes has a much lower in-line error with
    them; a fresh WriteNet (zero convs) has equal errors. Validation set of ``config``; ``parts`` as
    ``training.components.load_components`` returns them."""
    import torch.nn.functional as F

    from .training.losses import training_target

    model, generator, loader = _validation_batches(parts, config, batches, seed)
    scheduler = parts["scheduler"]
    sums = {t: dict(text_on=0.0, text_off=0.0, rest_on=0.0, rest_off=0.0) for t in timesteps}
    n_text = n_rest = 0
    for batch, latents, masked, image_context, text_context in loader:
        factor = batch.position.shape[-1] // latents.shape[-1]
        text = F.max_pool2d(batch.position[:, :, 0].float().amax(1, keepdim=True), factor)[:, 0] > 0
        n_text, n_rest = n_text + int(text.sum()), n_rest + int((~text).sum())
        for t in timesteps:
            steps = torch.full((len(latents),), t, dtype=torch.long)
            noise = torch.randn(latents.shape, generator=generator)
            noisy = scheduler.add_noise(latents, noise, steps)
            target = training_target(scheduler, latents, noise, steps)
            for tag, scales in (("on", None), ("off", [0.0] * len(model.control_scales))):
                out = _predict(model, batch, noisy, steps, masked, image_context, text_context, scales)
                err = ((out - target) ** 2).mean(1)
                sums[t][f"text_{tag}"] += float(err[text].sum())
                sums[t][f"rest_{tag}"] += float(err[~text].sum())
    return {
        t: {k: round(v / (n_text if k.startswith("text") else n_rest), 5) for k, v in s.items()}
        for t, s in sums.items()
    }


@torch.no_grad()
def denoised_previews(parts: dict, config, vae, images: int = 6, timesteps=(300, 500, 800, 950), seed: int = 0):
    """What the model predicts in one step: for the first ``images`` validation images, the clean image the
    prediction at each timestep implies (the scheduler's x0 from its target), decoded by ``vae``. Returns a
    (3, images * H, (1 + len(timesteps)) * W) tensor in [-1, 1]: columns are the VAE's reconstruction of
    the source, then the timesteps. Where the words read at small t but not at large t, the model knows the
    letters and generation from noise is what loses them."""
    model, generator, loader = _validation_batches(parts, config, 1, seed)
    batch, latents, masked, image_context, text_context = next(loader)
    scheduler, scale = parts["scheduler"], parts["vae"].config.scaling_factor
    columns = [latents]
    for t in timesteps:
        steps = torch.full((len(latents),), t, dtype=torch.long)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, steps)
        out = _predict(model, batch, noisy, steps, masked, image_context, text_context)
        columns.append(_clean_from_prediction(scheduler, noisy, out, t))
    decoded = [vae.decode(c[:images] / scale).sample.clamp(-1, 1) for c in columns]
    return torch.cat([torch.cat(list(d), dim=1) for d in decoded], dim=2)


def _clean_from_prediction(scheduler, noisy, prediction, t: int):
    """x0 from the model output at timestep ``t`` under the scheduler's prediction type."""
    alpha = scheduler.alphas_cumprod[t]
    if scheduler.config.prediction_type == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction
    if scheduler.config.prediction_type == "epsilon":
        return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
