"""Make the embedded demo model: data -> VAE -> UNet -> AnyText2 (the suite's loop) -> focus -> anneal -> OCR -> export.

    python examples/make_demo_model.py --work_dir demo-train            # runs/resumes every stage
    python examples/make_demo_model.py --work_dir demo-train --until vae
    python examples/make_demo_model.py --work_dir demo-train --only vae_decoder  # one stage (e.g. beside anytext2)
    python examples/make_demo_model.py --work_dir demo-train --score_vae  # OCR of the latest VAE checkpoint
    python examples/make_demo_model.py --work_dir demo-train --score_vae vae_decoder
    python examples/make_demo_model.py --work_dir demo-train --score_anytext2  # held-out words, latest loop checkpoint
    python examples/make_demo_model.py --work_dir demo-train --score_anytext2 focus  # ... of the focus stage
    # the ocr stage's warm restarts: ocr2 (2400 steps), then ocr3 (2000 steps at CTC weight 0.3)
    python examples/make_demo_model.py --work_dir demo-train --ocr_restarts 2400 2000:0.3
    # go on from an exported model whose last loop stage is anneal (its card stands for every stage up to
    # vae_decoder; here the session-10 model from git): the ocr stage, eval, export
    mkdir s10 && git archive fca98b7 src/anytext2_diffusers/assets/demo_model | tar -x -C s10
    python examples/make_demo_model.py --work_dir demo-train2 --start_from s10/src/anytext2_diffusers/assets/demo_model

Each stage is skipped once done and resumes from its checkpoints when interrupted, so the recipe can be
run again (in another session) until it finishes; ``recipe.json`` in the work folder records what ran
and becomes the model card. Stages and figures: docs/demo_model.md; logic: ``anytext2_diffusers.demo_model``.
"""

import argparse
import json
import logging
import sys

from anytext2_diffusers import demo_model as dm

STAGES = dm.STAGES


def restart(value: str) -> tuple[int, float | None]:
    """``STEPS`` or ``STEPS:CTC_WEIGHT`` (one value of ``--ocr_restarts``)."""
    steps, _, beta = value.partition(":")
    try:
        return int(steps), (float(beta) if beta else None)
    except ValueError:
        message = f"{value!r}: expected STEPS or STEPS:CTC_WEIGHT, e.g. 2400 or 2000:0.3"
        raise argparse.ArgumentTypeError(message) from None


def score_stage(value: str) -> str:
    if value in ("anytext2", "focus", "anneal", "ocr") or dm.is_restart_stage(value):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: not a loop stage (anytext2, focus, anneal, ocr, ocr2, ocr3, ...)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work_dir", required=True, help="data, checkpoints and logs (outside the repository)")
    p.add_argument("--until", choices=STAGES, default="export", help="last stage to run")
    p.add_argument(
        "--only",
        choices=("vae_decoder",),
        default=None,
        help="run only this stage (vae_decoder needs only the vae stage, so it can run beside anytext2)",
    )
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    p.add_argument("--n_train", type=int, default=4000, help="synthetic training images")
    p.add_argument("--vae_steps", type=int, default=6000)
    p.add_argument("--unet_steps", type=int, default=4000, help="plain-diffusion pretraining steps of the UNet")
    p.add_argument("--unet_batch_size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="device of the unet stage (the loop's is Accelerate's choice)")
    p.add_argument(
        "--anytext2_steps",
        type=int,
        default=dm.ANYTEXT2_STEPS,
        help="loop steps on the varied images (6526: where the run behind the demo model moved on to focus)",
    )
    p.add_argument(
        "--focus_steps",
        type=int,
        default=dm.FOCUS_STEPS,
        help="loop steps on the clean-style images (a cap: a run is ended at checkpoint N with --focus_steps N)",
    )
    p.add_argument(
        "--anneal_steps", type=int, default=dm.ANNEAL_STEPS, help="loop steps with the learning rate falling to 0"
    )
    p.add_argument("--vae_decoder_steps", type=int, default=4000, help="decoder-only VAE steps (encoder frozen)")
    p.add_argument(
        "--ocr_steps", type=int, default=dm.OCR_STEPS, help="loop steps with the OCR losses on (0: skip the stage)"
    )
    p.add_argument(
        "--ocr_restarts",
        nargs="+",
        type=restart,
        default=None,
        metavar="STEPS[:CTC_WEIGHT]",
        help="warm restarts of the ocr stage (stages ocr2, ocr3, ...), each run on from the one before with the "
        "learning rate restarted: loop steps, and a CTC weight when not --ocr_loss_beta (0: none; default "
        f"{' '.join(dm.restarts_value(dm.OCR_RESTARTS))}, or none with --ocr_steps 0)",
    )
    p.add_argument(
        "--ocr2_steps", type=int, default=None, help="older spelling of --ocr_restarts STEPS (cards of 2026-11-27)"
    )
    p.add_argument(
        "--ocr_loss_alpha", type=float, default=dm.OCR_LOSS_WEIGHT, help="ocr stage: weight of the OCR perceptual loss"
    )
    p.add_argument("--ocr_loss_beta", type=float, default=dm.OCR_LOSS_WEIGHT, help="ocr stage: weight of the CTC loss")
    p.add_argument(
        "--ocr_step_weight",
        action=argparse.BooleanOptionalAction,
        default=dm.OCR_STEP_WEIGHT,
        help="ocr stage: weight the OCR losses by alphas_cumprod[t] as AnyText2 does (--no-ocr_step_weight: "
        "every timestep alike)",
    )
    p.add_argument(
        "--start_from",
        default=None,
        help="an exported demo model folder whose last loop stage is anneal or ocr (not a restart of it), taken as "
        "the result of every stage up to that one (its card's records are copied); the recipe goes on from it",
    )
    p.add_argument(
        "--export_dir",
        default=None,
        help="fp16 folder written by the export stage (default: the package's assets/demo_model, "
        "which testing.demo_pipeline() loads)",
    )
    p.add_argument(
        "--score_vae",
        nargs="?",
        const="vae",
        choices=("vae", "vae_decoder"),
        help="only score the latest checkpoint of that VAE stage (default vae), then exit",
    )
    p.add_argument(
        "--score_anytext2",
        nargs="?",
        const="anytext2",
        type=score_stage,
        help="only generate and read the held-out words with the latest checkpoint of that loop stage: anytext2 "
        "(default), focus, anneal, ocr or a restart of it (ocr2, ocr3, ...), then exit",
    )
    p.add_argument("--score_limit", type=int, default=None, help="first N held-out words for --score_anytext2")
    p.add_argument("--score_sampler_steps", type=int, default=20, help="DDIM steps for --score_anytext2")
    p.add_argument("--score_guidance", type=float, default=dm.EVAL_GUIDANCE, help="CFG scale for --score_anytext2")
    args = p.parse_args(argv)
    if args.ocr2_steps is not None:
        if args.ocr_restarts is not None:
            p.error("--ocr2_steps is the older spelling of --ocr_restarts: give one of them")
        args.ocr_restarts = [(args.ocr2_steps, None)]
    if args.ocr_restarts is None:  # a skipped ocr stage skips its restarts (cards from before them: --ocr_steps 0)
        args.ocr_restarts = dm.OCR_RESTARTS if args.ocr_steps > 0 else ()
    args.ocr_restarts = [(steps, beta) for steps, beta in args.ocr_restarts if steps > 0]
    if args.ocr_restarts and args.ocr_steps <= 0:
        p.error("--ocr_restarts run on from the ocr stage: they need --ocr_steps > 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    last = STAGES.index(args.until)

    data = dm.stage_data(args.work_dir, n_train=args.n_train, seed=args.seed)
    if args.start_from:
        dm.stage_start_from(args.work_dir, args.start_from)
    if args.score_vae:
        print(json.dumps(dm.score_vae_checkpoint(args.work_dir, data, args.score_vae), ensure_ascii=False))
        return 0
    decoder = dict(steps=args.vae_decoder_steps, seed=args.seed, stage="vae_decoder")
    if args.only == "vae_decoder":
        record = dm.stage_vae(args.work_dir, data, **decoder)
        print(json.dumps({k: v for k, v in record.items() if k != "config"}, ensure_ascii=False))
        return 0
    if args.score_anytext2:
        scored = dm.score_anytext2_checkpoint(
            args.work_dir, data, args.score_sampler_steps, args.score_limit, stage=args.score_anytext2,
            guidance_scale=args.score_guidance,
        )  # fmt: skip
        print(json.dumps(scored, ensure_ascii=False))
        return 0
    if last >= STAGES.index("vae"):
        dm.stage_vae(args.work_dir, data, steps=args.vae_steps, seed=args.seed)
    if last >= STAGES.index("unet"):
        unet = dm.stage_unet(
            args.work_dir, data, args.unet_steps, args.seed, batch_size=args.unet_batch_size, device=args.device
        )
    if last >= STAGES.index("init"):
        init = dm.stage_init(args.work_dir, data, unet, seed=args.seed)
    if last >= STAGES.index("anytext2"):
        trained = dm.stage_anytext2(args.work_dir, data, init, steps=args.anytext2_steps)
    if last >= STAGES.index("focus_data"):
        focus_data = dm.stage_focus_data(args.work_dir, n_train=args.n_train, seed=args.seed + 2)
    if last >= STAGES.index("focus"):
        trained = dm.stage_focus(args.work_dir, data, focus_data, trained, steps=args.focus_steps)
    if last >= STAGES.index("anneal"):
        trained = dm.stage_anneal(args.work_dir, data, focus_data, trained, steps=args.anneal_steps)
    if last >= STAGES.index("vae_decoder"):
        dm.stage_vae(args.work_dir, data, **decoder)
    if last >= STAGES.index("ocr") and args.ocr_steps > 0:
        trained = dm.stage_ocr(
            args.work_dir, data, focus_data, trained, steps=args.ocr_steps, loss_alpha=args.ocr_loss_alpha,
            loss_beta=args.ocr_loss_beta, step_weight=args.ocr_step_weight,
        )  # fmt: skip
    if last >= STAGES.index("ocr_restarts"):
        ocr = trained
        for number, (steps, loss_beta) in enumerate(args.ocr_restarts, start=1):
            trained = dm.stage_ocr_restart(args.work_dir, data, focus_data, ocr, trained, number, steps, loss_beta)
    if last >= STAGES.index("eval"):
        print(json.dumps(dm.stage_eval(args.work_dir, data, trained["pipeline"]), ensure_ascii=False))
    if last >= STAGES.index("export"):
        print(json.dumps(dm.stage_export(args.work_dir, trained["pipeline"], args.export_dir), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
