"""Every training setting in one dataclass; the command line and ``--config FILE.yaml`` map onto it.

Names follow diffusers' training examples; AnyText2-specific ones keep the reference's names in
snake_case. Defaults are the reference ``train.py`` + ``models_yaml/anytext2_sd15.yaml`` values.
Precedence: dataclass defaults < ``--demo`` preset < YAML file < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields

import yaml

from ..utils.assets import demo_model_dir
from ..utils.cli import ArgumentParser, add_dataclass_arguments, option
from ..utils.cli import options_markdown as _options_markdown

_opt = option


@dataclass
class TrainingConfig:
    # --- model --------------------------------------------------------------------------------
    pretrained_model_name_or_path: str | None = _opt(
        None,
        "SD1.5 in diffusers layout (folder or Hub id), an SD1.5 single-file checkpoint (.safetensors/.ckpt), "
        "or an AnyText2 pipeline folder/repo to fine-tune (detected by its model_index.json).",
        type=str,
    )
    ocr_model_name_or_path: str | None = _opt(
        None,
        "PP-OCRv3 recognizer saved with save_pretrained; default: convert the ONNX model shipped in "
        "rapidocr-onnxruntime (offline). Also replaces an AnyText2 pipeline's own ocr component (a pipeline "
        "folder without one gets the rapidocr default).",
        type=str,
    )
    revision: str | None = _opt(None, "Hub revision of the pretrained model.", type=str)
    variant: str | None = _opt(None, "Weight variant to load, e.g. fp16.", type=str)
    tiny_model: bool = _opt(
        False, "Use the tiny offline random components (anytext2_diffusers.testing) instead of a pretrained model."
    )
    # --- data ---------------------------------------------------------------------------------
    train_data: list = _opt(
        [], "AnyWord annotation JSON files, a Parquet export folder or a Hub dataset id.", nargs="+", type=str
    )
    dataset_name: str | None = _opt(
        None,
        "Hub dataset id, or a folder written by anytext2-export, loaded through datasets (diffusers' name for "
        "a one-source --train_data; the two are exclusive).",
        type=str,
    )
    validation_data: list = _opt(
        [],
        "Validation data in the same forms; default: the train data's validation split if any.",
        nargs="+",
        type=str,
    )
    validation_fraction: float = _opt(
        0.0, "Hold out this fraction of JSON train records for validation when no validation data is given."
    )
    data_root: str | None = _opt(None, "Overrides the data_root of every annotation JSON.", type=str)
    cache_dir: str | None = _opt(None, "datasets/Hub cache folder.", type=str)
    resolution: int = _opt(512, "Training image size (square, multiple of 8).")
    max_lines: int = _opt(5, "Text lines per image (more are moved to the ignored mask).")
    max_chars: int = _opt(20, "Characters per line.")
    mask_ratio: float = _opt(0.0, "Probability of a text-editing (masked image) sample.")
    font_hint_prob: float = _opt(0.8, "Probability of a font hint per line (0 disables font hints).")
    font_hint_area: list = _opt(
        [0.7, 1.0], "Range of the area of each line kept in the font hint.", nargs=2, type=float
    )
    font_hint_randaug: bool = _opt(True, "Random augmentation of font hints.")
    color_prob: float = _opt(1.0, "Probability of keeping a line's colour (else 'unspecified').")
    wm_thresh: float = _opt(1.0, "Skip images whose watermark score exceeds this.")
    rand_font: bool = _opt(True, "Random font per line (else each language's first font).")
    font_config: str | None = _opt(None, "JSON/YAML language->fonts mapping (default: bundled fonts).", type=str)
    dataset_percent: float = _opt(1.0, "Use this fraction of every annotation file.")
    dataloader_num_workers: int = _opt(0, "DataLoader worker processes (the reference uses 8).")
    # --- model switches -----------------------------------------------------------------------
    sd_locked: bool = _opt(True, "Keep the UNet frozen; --no-sd_locked trains its decoder (up blocks) and output.")
    only_mid_control: bool = _opt(False, "Feed WriteNet only into the UNet's mid block.")
    unlock_qkv: bool = _opt(False, "Also train the UNet's cross-attention q/k/v (where gradients reach them).")
    train_text_embedding: bool = _opt(True, "Train the text embedding (the reference's cond_stage_trainable).")
    train_font_ocr: bool = _opt(True, "Train the font recognizer copy (the reference's style_ocr_trainable).")
    attnx_mid_block: bool = _opt(True, "AttnX in the mid block (reference mid_attnx).")
    attnx_up_blocks: list = _opt(
        [1, 2], "up_blocks with AttnX (reference output_attnx_level [2, 1]).", nargs="*", type=int
    )
    attnx_down_blocks: list = _opt([], "down_blocks with AttnX (reference input_attnx).", nargs="*", type=int)
    attnx_scale: float = _opt(1.0, "Scale of the AttnX terms.")
    control_scales: list = _opt(
        [1.0] * 13,
        "Scale of each WriteNet residual as the UNet receives it (12 down + mid; the reference's control_scales); "
        "one value scales all.",
        nargs="+",
        type=float,
    )
    loss_alpha: float = _opt(0.0, "Weight of the OCR perceptual loss (the paper uses 0.003).")
    loss_beta: float = _opt(0.0, "Weight of the OCR CTC loss.")
    latin_weight: float = _opt(1.0, "Weight of Latin lines in the OCR losses.")
    with_step_weight: bool = _opt(True, "Weight the OCR losses by alphas_cumprod[t].")
    use_vae_upsample: bool = _opt(
        True, "Decode x0 with the VAE for the OCR losses (else a grey bilinear upsampling of the latent)."
    )
    glyph_scale: int = _opt(1, "WriteNet glyph resolution factor (1 or 2), for a fresh WriteNet.")
    # --- LoRA (docs/lora.md) --------------------------------------------------------------------
    lora_rank: int = _opt(0, "LoRA rank; > 0 trains LoRA adapters on --lora_components instead of full weights.")
    lora_alpha: float | None = _opt(None, "LoRA alpha (scale alpha/rank); default: the rank.", type=float)
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA branch.")
    lora_target_modules: list = _opt(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "Module names (suffixes) that get adapters: by default the attention projections.",
        nargs="+",
        type=str,
    )
    lora_components: list = _opt(
        ["unet"],
        "Components trained with LoRA: unet (replaces --unlock_qkv), controlnet (WriteNet), attnx.",
        nargs="+",
        type=str,
        choices=["unet", "controlnet", "attnx"],
    )
    merge_lora_at_end: bool = _opt(False, "Write merged weights in the final folder instead of adapter files.")
    # --- optimisation -------------------------------------------------------------------------
    train_batch_size: int = _opt(3, "Batch size per device.")
    gradient_accumulation_steps: int = _opt(2, "Micro-batches per optimizer step.")
    learning_rate: float = _opt(2e-5, "AdamW learning rate.")
    scale_lr: bool = _opt(False, "Multiply the learning rate by batch size x accumulation x processes.")
    lr_scheduler: str = _opt(
        "constant",
        "diffusers.optimization schedule.",
        choices=["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"],
    )
    lr_warmup_steps: int = _opt(0, "Warm-up steps of the schedule.")
    lr_num_cycles: int = _opt(1, "Hard restarts of cosine_with_restarts (diffusers' num_cycles).")
    lr_power: float = _opt(1.0, "Power of the polynomial schedule.")
    use_8bit_adam: bool = _opt(False, "bitsandbytes' 8-bit AdamW (pip install anytext2-diffusers[bnb]).")
    adam_beta1: float = _opt(0.9, "AdamW beta1.")
    adam_beta2: float = _opt(0.999, "AdamW beta2.")
    adam_weight_decay: float = _opt(0.01, "AdamW weight decay (torch's default, as the reference).")
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon.")
    max_grad_norm: float | None = _opt(None, "Clip the gradient norm (the reference does not clip).", type=float)
    num_train_epochs: int = _opt(15, "Epochs (ignored when --max_train_steps is given).")
    max_train_steps: int | None = _opt(None, "Optimizer steps; overrides --num_train_epochs.", type=int)
    mixed_precision: str | None = _opt(
        None, "no|fp16|bf16 (default: accelerate's config).", type=str, choices=["no", "fp16", "bf16"]
    )
    gradient_checkpointing: bool = _opt(False, "Gradient checkpointing in WriteNet and the UNet.")
    allow_tf32: bool = _opt(False, "Allow TF32 matmuls on Ampere+ GPUs.")
    seed: int = _opt(0, "Seed of the data order, noise, timesteps and dropout (one seed, exact resume).")
    use_ema: bool = _opt(False, "Keep an EMA of the trainable weights (saved as the final weights).")
    ema_decay: float = _opt(0.9999, "EMA decay.")
    snr_gamma: float | None = _opt(
        None,
        "Min-SNR weighting of the diffusion term (Hang et al. 2023; 5.0 is the usual value); off: the reference's "
        "unweighted loss.",
        type=float,
    )
    noise_offset: float = _opt(0.0, "Scale of a per-channel constant added to the training noise (0: off).")
    prediction_type: str | None = _opt(
        None,
        "What the UNet predicts: epsilon or v_prediction (default: the base model's scheduler; SD1.5 and "
        "AnyText2 predict epsilon). Set on the training scheduler and saved with the pipeline.",
        type=str,
        choices=["epsilon", "v_prediction"],
    )
    max_nonfinite_steps: int = _opt(5, "Stop (with a checkpoint) after this many non-finite losses in a row.")
    # --- speed (docs/scaling.md) --------------------------------------------------------------
    cache_latents: bool = _opt(
        False,
        "Keep the VAE posterior of each target image (and the constant generation-mode masked latent) after its "
        "first encoding; edit-mode masked images are still encoded every step.",
    )
    cache_ocr_necks: int = _opt(
        0,
        "Memoize the frozen OCR recognizer's neck per exact input (glyph lines; font-hint crops without a trainable "
        "font recognizer) for up to N inputs (LRU, per process, ~10 KiB CPU memory each); 0: off. Equal to live "
        "reading up to float rounding; pays where inputs recur (small data, many epochs).",
    )
    channels_last: bool = _opt(False, "channels_last weights for the UNet and WriteNet (GPU, fp16/bf16).")
    torch_compile: bool = _opt(False, "torch.compile the UNet and WriteNet.")
    torch_compile_backend: str = _opt(
        "inductor", "torch.compile backend (aot_eager: traces forward and backward without code generation)."
    )
    torch_compile_mode: str | None = _opt(
        None,
        "torch.compile mode for the inductor backend.",
        type=str,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    font_ocr_train_mode: bool = _opt(
        True,
        "Font recognizer in train mode (BatchNorm batch statistics, dropout) as the reference; off: eval mode, "
        "which makes a step independent of how the batch is split over processes.",
    )
    # --- checkpoints --------------------------------------------------------------------------
    output_dir: str = _opt("anytext2-model", "Checkpoints, logs and the final pipeline folder.")
    checkpointing_steps: int | None = _opt(None, "Save a checkpoint every N optimizer steps.", type=int)
    checkpointing_epochs: int | None = _opt(
        1,
        "Save a checkpoint every N epochs (0 disables; off by default when --checkpointing_steps is given).",
        type=int,
    )
    checkpoints_total_limit: int | None = _opt(3, "Keep at most this many checkpoints.", type=int)
    resume_from_checkpoint: str | None = _opt(
        None, "A checkpoint folder or 'latest' (the newest intact one; damaged ones are skipped).", type=str
    )
    reset_lr_scheduler: bool = _opt(
        False,
        "On resume, use this run's --learning_rate/--lr_scheduler/--lr_warmup_steps/--scale_lr (else a change "
        "is refused): the restored schedule keeps its position and takes the new base rate.",
    )
    fallback_to_previous_checkpoint: bool = _opt(
        False, "On resume, when the checkpoint is damaged, resume from the previous complete one instead of stopping."
    )
    # --- logging & validation -----------------------------------------------------------------
    report_to: str = _opt(
        "tensorboard",
        "Tracker(s) accelerate logs to: one of its trackers (tensorboard, wandb, comet_ml, mlflow, aim, clearml, "
        "dvclive, ...), several comma-separated, all, or none.",
    )
    logging_dir: str = _opt("logs", "Tracker folder, relative to output_dir.")
    tracker_project_name: str = _opt("anytext2", "Tracker project / run group name.")
    logging_steps: int = _opt(1, "Log training scalars every N optimizer steps.")
    validation_steps: int | None = _opt(1000, "Validate every N optimizer steps (and always at the end).", type=int)
    num_validation_images: int = _opt(4, "Validation samples to draw (and validation batches' images to log).")
    max_validation_batches: int = _opt(4, "Validation batches for the v/* losses.")
    validation_prompt: list = _opt(
        [],
        "Captions sampled at each validation with the texts in double quotes, e.g. 'a sign that reads \"OPEN\"' "
        "(no validation split needed); logged as the v/prompt_images grid.",
        nargs="+",
        type=str,
    )
    validation_image: list = _opt(
        [],
        "Position images for --validation_prompt (white regions on black, one per quoted line, in reading order): "
        "one per prompt, or one for all.",
        nargs="+",
        type=str,
    )
    validation_num_inference_steps: int = _opt(20, "Sampler steps for validation images.")
    validation_guidance_scale: float = _opt(9.0, "CFG scale for validation images (the reference logs 9.0).")
    # --- hub ----------------------------------------------------------------------------------
    push_to_hub: bool = _opt(False, "Upload the final pipeline folder (not the checkpoints) to the Hub.")
    hub_model_id: str | None = _opt(None, "Hub repo id (default: the output folder's name).", type=str)
    hub_token: str | None = _opt(None, "Hub token (default: the environment's login).", type=str)
    hub_private: bool = _opt(False, "Create the Hub repo as private.")
    model_card_license: str | None = _opt(
        None,
        "Licence id in the model card (default: the base model's, creativeml-openrail-m for SD1.5-derived weights).",
        type=str,
    )
    # --- demo ---------------------------------------------------------------------------------
    demo: bool = _opt(
        False, "Offline CPU demo: a short fine-tune of the shipped demo model on synthetic data (docs/training.md)."
    )
    demo_samples: int = _opt(12, "Synthetic images written by --demo.")

    def __post_init__(self):
        self.font_hint_area = [float(x) for x in self.font_hint_area]
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.glyph_scale not in (1, 2):
            raise ValueError(f"glyph_scale must be 1 or 2, got {self.glyph_scale}")
        if self.gradient_accumulation_steps < 1 or self.train_batch_size < 1:
            raise ValueError("train_batch_size and gradient_accumulation_steps must be >= 1")
        self.lora_components = list(self.lora_components)
        self.lora_target_modules = list(self.lora_target_modules)
        if self.cache_ocr_necks < 0:
            raise ValueError(f"cache_ocr_necks must be >= 0 (0 = off), got {self.cache_ocr_necks}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        unknown = sorted(set(self.lora_components) - {"unet", "controlnet", "attnx"})
        if unknown:
            raise ValueError(f"lora_components: unknown {unknown} (choose from unet, controlnet, attnx)")
        if self.lora_rank and self.unlock_qkv and "unet" in self.lora_components:
            raise ValueError(
                "--unlock_qkv trains the UNet's q/k/v in full; with --lora_rank the UNet's attention trains as "
                "LoRA adapters instead: drop --unlock_qkv (or 'unet' from --lora_components)"
            )
        if self.dataset_name:
            if self.train_data and list(self.train_data) != [self.dataset_name]:
                raise ValueError("--dataset_name and --train_data both name the training data: give one")
            self.train_data = [self.dataset_name]
        if self.merge_lora_at_end and not self.lora_rank:
            raise ValueError("--merge_lora_at_end needs --lora_rank > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        """The resolved config as YAML (``--config`` reads it back); the Hub token is never written."""
        data = self.to_dict()
        data["hub_token"] = None
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)


# Applied by --demo before the YAML file and the command line: a short fine-tune of the demo model shipped with
# the package (trained in-project at 128 px on this kind of synthetic text, docs/demo_model.md) that finishes
# on 2 CPU cores in a few minutes and exercises every part (OCR losses, validation, checkpoints, final folder).
DEMO_PRESET = dict(
    pretrained_model_name_or_path=demo_model_dir(),
    output_dir="anytext2-demo",
    resolution=128,  # the demo model's training resolution
    max_lines=3,  # as its recipe (its data draws 1-3 lines per image)
    train_font_ocr=False,  # it reads fonts with the frozen glyph recognizer: it carries no font recognizer copy
    train_batch_size=2,
    gradient_accumulation_steps=1,
    # sd_locked stays AnyText2's default (UNet frozen): WriteNet, AttnX and the text embedding are fine-tuned.
    # A third of the recipe's 3e-4 (batch 8): a trained model on the data it was trained on needs no large
    # steps, and a high rate with batch 2 would shake what it learned in a run this short.
    learning_rate=1e-4,
    max_train_steps=40,
    checkpointing_steps=20,
    checkpointing_epochs=0,
    validation_steps=20,
    num_validation_images=2,
    max_validation_batches=1,
    validation_num_inference_steps=20,  # the evaluation's DDIM steps: the grid shows what the model writes
    # The demo recipe's evaluation scale (demo_model.EVAL_GUIDANCE): AnyText2's loop never drops the caption, and
    # the tiny model's words read best at 3 (at 7.5 or the reference's 9 they wash out: docs/demo_model.md).
    validation_guidance_scale=3.0,
    loss_alpha=0.003,
    loss_beta=0.003,
    mixed_precision="no",
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="anytext2-train",
        usage="%(prog)s [--demo] [--config FILE.yaml] [--OPTION VALUE ...]",
        description="Train AnyText2 (WriteNet, AttnX, text embedding) with Accelerate. Options are grouped as in "
        "docs/training.md; --config FILE.yaml takes the same keys.",
    )
    parser.add_argument(
        "--config", type=str, default=argparse.SUPPRESS, help="YAML file with the same keys as the options below."
    )
    # SUPPRESS: only what the user typed overrides the YAML file and the --demo preset
    add_dataclass_arguments(parser, TrainingConfig, defaults=False)
    return parser


def options_markdown() -> str:
    """The "All options" tables of docs/training.md, generated from the dataclass (sections follow its
    ``# --- name ---`` comments, as the --help groups do), so the documentation cannot drift from the parser."""
    return _options_markdown(TrainingConfig)


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: file not found")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values")
    known = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {unknown} (options are the command-line names)")
    return data


def parse_args(argv=None) -> TrainingConfig:
    """Command line (+ ``--config`` YAML, + ``--demo`` preset) -> TrainingConfig."""
    cli = vars(build_parser().parse_args(argv))
    config_file = cli.pop("config", None)
    from_yaml = load_yaml(config_file) if config_file else {}
    values: dict = {}
    if cli.get("demo", from_yaml.get("demo", False)):
        values.update(DEMO_PRESET)
    values.update(from_yaml)
    values.update(cli)
    given = {**from_yaml, **cli}
    # As the reference (save_steps XOR save_epochs): asking for step checkpoints turns the epoch default off.
    if given.get("checkpointing_steps") and "checkpointing_epochs" not in given:
        values["checkpointing_epochs"] = 0
    return TrainingConfig(**values)
