"""The Accelerate training loop: read it top to bottom.

setup (accelerator, components, trainable set, optimizer, data, resume) -> for each batch: one loss
(``step.AnyText2TrainingModel``), one backward and, per accumulation window, one ``optimizer_step`` -> log,
checkpoint, validate -> final pipeline folder, model card, optional Hub upload. What differs under DeepSpeed
or FSDP is in ``distributed``.

Exact resume: each sample draws its VAE posterior noise, noise and timestep from a generator seeded by
(seed, step, dataset index) (the same for any number of processes), each micro-step reseeds the global
torch RNG (dropout) from (seed, step, micro-step, rank), and the data order of an epoch is a pure
function of (seed, epoch); a resumed run skips the batches the checkpoint had consumed.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data import FaultCounter
from ..data.demo_words import make_word_data
from . import checkpointing as ckpt
from . import distributed, lora, precision, resume_check
from .components import TRAINABLE_COMPONENTS, load_components, setup_training_model
from .data import build_datasets, make_loader
from .hub import push_to_hub, write_model_card
from .optim import make_lr_scheduler, make_optimizer
from .output import FinalSaveError, save_pipeline_folder
from .preflight import report_to_trackers
from .run_lock import lock_output_dir
from .step import derive_seed, sample_generators
from .trainable import describe
from .validation import run_validation

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; a checkpoint of the last good weights was saved."""


@dataclass
class TrainResult:
    global_step: int
    output_dir: str
    interrupted: bool = False  # stopped by SIGTERM/SIGINT (a checkpoint was saved)
    nonfinite_total: int = 0
    last_logs: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    checkpoint: str | None = None
    is_main_process: bool = True
    data_faults: dict = field(default_factory=dict)  # fault kind -> count, this process's batches


class TrainingCallback:
    """Hooks for tests and tools; every method is optional."""

    def on_loss(self, state: ckpt.TrainingState, output):  # may replace the loss output (fault injection)
        return output

    def on_step_end(self, state: ckpt.TrainingState, logs: dict, batch_indices: list[int]) -> None:
        pass

    def on_train_end(self, parts: dict) -> None:  # the trained components, before the final folder is written
        pass


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.received = signum
        logger.warning(
            "received %s: saving a checkpoint at the end of this step, then exiting", signal.Signals(signum).name
        )

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class _Window:
    """Accumulators of one optimizer step (its micro-batches)."""

    loss: torch.Tensor  # (4,): sim, ocr, ctc, loss summed over the good micro-batches
    n: int = 0  # micro-batches
    good: int = 0  # micro-batches with a finite loss on every process
    bad: bool = False  # a non-finite loss or gradient: the step's update is dropped
    overflow: bool = False  # fp16: the loss scaler skipped the update (an expected overflow, not a fault)
    indices: list = field(default_factory=list)  # dataset indices seen (this process)
    data_wait: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def new(cls, device) -> _Window:
        return cls(loss=torch.zeros(4, device=device))

    def record(self, out, good: bool, indices) -> None:
        self.bad = self.bad or not good
        if good:
            self.loss += torch.stack([out.simple.mean(), out.ocr.mean(), out.ctc.mean(), out.loss]).detach().float()
            self.good += 1
        self.n += 1
        self.indices += indices.tolist()


def optimizer_step(accelerator, optimizer, lr_scheduler, params, loss, good: bool, window: _Window, max_grad_norm):
    """Backward of one micro-batch and, at the end of its accumulation window, the update: clip, step (or
    skip when the window saw a non-finite loss or gradient), schedule, zero. Returns the gradient norm at
    the window's end, else None.

    A micro-batch whose loss is not finite on some process still runs a backward everywhere (DDP expects
    one), of a zero loss. DeepSpeed steps inside ``accelerator.backward`` at the window's last micro-step,
    so a bad window is frozen there (``distributed.frozen_step``) and ``clip_grad_norm_`` returns the norm
    the engine measured (``optimizer.step()`` is then a no-op)."""
    with distributed.frozen_step(accelerator, optimizer, freeze=window.bad and accelerator.sync_gradients):
        accelerator.backward(loss if good else torch.nan_to_num(loss) * 0.0)
    if not accelerator.sync_gradients:
        return None
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    finite = grad_norm is None or math.isfinite(float(grad_norm))
    if not window.bad and (finite or accelerator.scaler is not None):
        # fp16 GradScaler: an overflow skips the update and lowers the scale (expected in the first steps; not
        # a fault), so the scaler must see every finite-loss step.
        optimizer.step()
        window.overflow = accelerator.scaler is not None and optimizer.step_was_skipped
    else:
        window.bad = True
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _end_step(accelerator, state: ckpt.TrainingState, window: _Window, grad_norm, lr_scheduler, ema, params, config):
    """Count the finished optimizer step, update the EMA, log; returns the step's scalars."""
    state.global_step += 1
    state.samples_seen += window.n * config.train_batch_size * accelerator.num_processes
    if window.bad:
        state.nonfinite_total += 1
        state.nonfinite_in_a_row += 1
        logger.warning(
            "step %d: non-finite loss or gradient, update skipped (%d in a row, %d total)",
            state.global_step,
            state.nonfinite_in_a_row,
            state.nonfinite_total,
        )
    elif window.overflow:
        logger.info(
            "step %d: fp16 gradient overflow, update skipped by the loss scaler (scale now %g)",
            state.global_step,
            accelerator.scaler.get_scale(),
        )
    else:
        state.nonfinite_in_a_row = 0
        if ema is not None:
            ema.step(params)
    logs = _step_logs(accelerator, window, grad_norm, lr_scheduler, state, config)
    if state.global_step % config.logging_steps == 0:
        accelerator.log(logs, step=state.global_step)
    return logs


def _step_logs(accelerator, window: _Window, grad_norm, lr_scheduler, state, config) -> dict:
    """Scalars of one optimizer step: losses averaged over its micro-batches and the processes (left out
    when the step was skipped), lr, gradient norm, throughput and time spent waiting for data."""
    logs = {}
    if not window.bad:
        means = (accelerator.reduce(window.loss, reduction="mean") / max(1, window.good)).tolist()
        logs = dict(zip(("t/sim", "t/ocr", "t/ctc", "t/loss"), means))
    samples = window.n * config.train_batch_size * accelerator.num_processes
    logs.update(
        {
            "lr": lr_scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "samples_per_sec": samples / (time.perf_counter() - window.t0),
            "data_wait_sec": window.data_wait,
            "nonfinite_total": state.nonfinite_total,
        }
    )
    return logs


def _weight_dtype(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def _tracker_config(config) -> dict:
    """Flat scalars/strings for the trackers (TensorBoard's hparams take no lists or None)."""
    out = {}
    for k, v in config.to_dict().items():
        if k == "hub_token":
            continue
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _make_accelerator(config) -> Accelerator:
    distributed.skip_deepspeed_import_unless_requested()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        **distributed.accelerator_placement(),
        log_with=report_to_trackers(config.report_to),
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)  # 4 file names per checkpoint
    if not accelerator.is_main_process:  # one voice: other ranks report warnings and errors only
        for name in ("anytext2_diffusers", "accelerate"):
            logging.getLogger(name).setLevel(logging.WARNING)
    distributed.enable_fsdp_on_cpu_processes(accelerator)
    distributed.check_fsdp_supported(accelerator, config)
    precision.enable_native_fp16(accelerator)  # a CPU fp16 run takes the GPU's autocast + GradScaler path
    return accelerator


def _learning_rate(config, num_processes: int) -> float:
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * num_processes
    return lr


def _make_optimizer(groups: dict, config, num_processes: int) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' AdamW8bit with --use_8bit_adam) over one named group per component."""
    param_groups = [{"params": [p for _, p in group], "name": name} for name, group in groups.items()]
    return make_optimizer(param_groups, config, _learning_rate(config, num_processes))


def _resume(accelerator, config, groups: dict, resume: str | None, plan, lr_scheduler, batches_per_epoch: int):
    """A fresh state, or the one of the checkpoint ``resume`` (checked by ``resume_check``) with its weights,
    optimizer and RNG loaded (a damaged checkpoint may fall back to an earlier one)."""
    selection = {name: len(group) for name, group in groups.items()}
    state = ckpt.TrainingState(trainable=selection, num_processes=accelerator.num_processes)
    if resume:
        saved = ckpt.TrainingState.load(resume)
        if saved.trainable and saved.trainable != selection:
            raise ValueError(
                f"{resume} was trained with another trainable set ({saved.trainable} parameter tensors per "
                f"component, now {selection}): resume with the same --sd_locked/--unlock_qkv/--train_*/--lora_* "
                "switches"
            )
        resume = ckpt.load_checkpoint(
            accelerator, resume, config.output_dir, fallback=config.fallback_to_previous_checkpoint
        )
        state = ckpt.TrainingState.load(resume)  # of the checkpoint loaded (a fallback takes an earlier one)
        state.num_processes = accelerator.num_processes
        if plan.learning_rate:
            lr = _learning_rate(config, accelerator.num_processes)
            rates = resume_check.reset_lr_schedule(lr_scheduler, lr)
            logger.info("--reset_lr_scheduler: base rate %g, now %g at step %d", lr, rates[0], state.global_step)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            resume,
            state.global_step,
            state.epoch,
            state.batches_in_epoch,
        )
    if state.batches_in_epoch >= batches_per_epoch:
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    return state


def _save(accelerator, config, state: ckpt.TrainingState, reason: str) -> str | None:
    try:
        path = ckpt.save_checkpoint(
            accelerator, config.output_dir, state, config.checkpoints_total_limit, config=config
        )
        logger.info("saved %s (%s)", path, reason)
        return path
    except Exception as err:  # noqa: BLE001 - a failed save must not lose the run or older checkpoints
        logger.error(
            "checkpoint at step %d failed (%s: %s); earlier checkpoints are intact",
            state.global_step,
            type(err).__name__,
            err,
            exc_info=True,
        )
        return None


def _validate(accelerator, model, ema, params, parts: dict, val_loader, val_set, config, step: int) -> dict:
    """v/* scalars and the image grid, on the main process (with the EMA weights when there are some)."""
    scalars = {}
    validating = val_set is not None or bool(config.validation_prompt)
    # Under FSDP every process gathers the parameters (a collective); the main process validates.
    with distributed.unsharded(accelerator, model, enabled=validating):
        if accelerator.is_main_process and validating:
            if ema is not None:
                ema.store(params)
                ema.copy_to(params)
            with distributed.autocast(accelerator, _weight_dtype(accelerator)):
                scalars = run_validation(
                    accelerator, accelerator.unwrap_model(model), parts, val_loader, val_set, config, step
                )
            if ema is not None:
                ema.restore(params)
            accelerator.log(scalars, step=step)
            logger.info("validation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    accelerator.wait_for_everyone()
    return scalars


def _write_final(accelerator, model, parts: dict, ema, params, config, state, validation_scalars: dict, callbacks):
    """The final pipeline folder (whole float32 weights), the model card and the optional Hub upload. If the
    folder cannot be written, a checkpoint keeps the steps and ``FinalSaveError`` says where."""
    full = distributed.gather(accelerator, model)  # collective; None when the model holds them itself
    if full is not None and accelerator.is_main_process:
        distributed.materialize(accelerator.unwrap_model(model), full)
    del full
    final_error = None
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        callbacks.on_train_end(parts)
        try:
            if lora.lora_components(config):
                lora.save_final(parts, config)  # base components + adapters, or merged
            else:
                save_pipeline_folder(parts, config.output_dir)
        except Exception as err:  # noqa: BLE001 - a checkpoint keeps the steps, then one line (FinalSaveError)
            final_error = err
            if ema is not None:
                ema.restore(params)
    if distributed.any_process(accelerator, final_error is not None):
        kept = os.path.join(config.output_dir, f"{ckpt.PREFIX}{state.global_step}")
        kept = kept if os.path.isdir(kept) else _save(accelerator, config, state, "the final folder failed")
        accelerator.end_training()
        raise FinalSaveError(
            f"{final_error or 'the final pipeline folder failed on the main process'}; "
            + (
                f"training state kept in {kept}: free space, then rerun with --resume_from_checkpoint latest"
                if kept
                else "no checkpoint could be saved either"
            )
        ) from final_error
    if accelerator.is_main_process:
        write_model_card(config, state.global_step, validation_scalars)
        if config.push_to_hub:
            push_to_hub(config)
    accelerator.wait_for_everyone()


def _prepare_demo(config, accelerator) -> None:
    """--demo without data: synthesise AnyWord-format train/validation sets into output_dir/demo_data, of the
    kind the shipped demo model was last trained on (``data.demo_words.make_word_data`` in the focus stage's
    clean style: random letter strings and common-character words, 1-3 horizontal lines on plain gradients);
    validation shows held-out real words, never drawn in training."""
    root = os.path.join(config.output_dir, "demo_data")
    train_json = os.path.join(root, "train", "data_v1.2b.json")
    val_json = os.path.join(root, "validation", "data_v1.2b.json")
    if accelerator.is_main_process and not (os.path.isfile(train_json) and os.path.isfile(val_json)):
        size = max(128, config.resolution)  # the demo model's native size; text is drawn to fit the image
        make_word_data(os.path.dirname(train_json), config.demo_samples, config.seed, size, style="clean")
        n_val = max(2, config.num_validation_images)
        make_word_data(os.path.dirname(val_json), n_val, config.seed + 1000, size, heldout=True, style="clean")
    accelerator.wait_for_everyone()
    config.train_data = [train_json]
    config.validation_data = [val_json]


def train(config, callbacks: TrainingCallback | None = None) -> TrainResult:
    """Train; the main process holds the output folder's lock (``run_lock``) from start to end."""
    accelerator = _make_accelerator(config)
    with lock_output_dir(accelerator, config.output_dir):
        return _train(config, callbacks or TrainingCallback(), accelerator)


def _train(config, callbacks: TrainingCallback, accelerator) -> TrainResult:
    config.mixed_precision = accelerator.mixed_precision  # the saved configuration states the precision used
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        ckpt.recover_partials(config.output_dir)
    if config.demo and not config.train_data:
        _prepare_demo(config, accelerator)
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    set_seed(config.seed)
    train_set, val_set = build_datasets(config)

    # ---------------------------------------------------------------- models and trainable set
    parts = load_components(config)  # may adjust the config to a loaded pipeline: compare after it
    resume = ckpt.resolve_resume(
        config.output_dir, config.resume_from_checkpoint, fallback=config.fallback_to_previous_checkpoint
    )
    plan = resume_check.check_resume(resume, config, accelerator.num_processes) if resume else None
    if accelerator.is_main_process:
        config.save(os.path.join(config.output_dir, "training_config.yaml"))
    device, dtype = accelerator.device, _weight_dtype(accelerator)
    upcast = not distributed.deepspeed_active(accelerator)
    model, groups = setup_training_model(parts, config, device, dtype, upcast_buffers=upcast)
    shown = {name: parts[name] for name in (*TRAINABLE_COMPONENTS, "vae", "text_encoder", "ocr")}
    logger.info("trainable parameters:\n%s", describe(groups, shown))
    params = [p for group in groups.values() for _, p in group]

    # ---------------------------------------------------------------- optimizer, data, schedule, resume
    optimizer = _make_optimizer(groups, config, accelerator.num_processes)
    train_loader = make_loader(train_set, config, shuffle=True)
    val_loader = make_loader(val_set, config, shuffle=False) if val_set is not None else None
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    lr_scheduler = make_lr_scheduler(config, optimizer, max_steps, accelerator.num_processes)
    ckpt.register_hooks(accelerator, [name for name in TRAINABLE_COMPONENTS if name in groups])
    distributed.set_clipping(accelerator, config.max_grad_norm)
    model, optimizer, train_loader, lr_scheduler = accelerator.prepare(model, optimizer, train_loader, lr_scheduler)
    if distributed.fsdp_active(accelerator):  # prepare replaced the parameters with DTensor shards
        params = [p for p in model.parameters() if p.requires_grad]
    ema = None
    if config.use_ema:
        ema = EMAModel(params, decay=config.ema_decay)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=_tracker_config(config))
    state = _resume(accelerator, config, groups, resume, plan, lr_scheduler, len(train_loader))
    logger.info(
        "%d train samples, %d batches per epoch and process, %d optimizer steps (%d epochs), "
        "batch %d x %d accumulation x %d processes",
        len(train_set),
        len(train_loader),
        max_steps,
        num_epochs,
        config.train_batch_size,
        config.gradient_accumulation_steps,
        accelerator.num_processes,
    )

    def validate() -> dict:
        return _validate(accelerator, model, ema, params, parts, val_loader, val_set, config, state.global_step)

    # ---------------------------------------------------------------- the loop
    result = TrainResult(
        global_step=state.global_step, output_dir=config.output_dir, is_main_process=accelerator.is_main_process
    )
    progress = tqdm(
        total=max_steps, initial=state.global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    faults = FaultCounter()
    window = _Window.new(device)
    validation_scalars: dict = {}
    model.train()
    with _StopSignal() as stop:
        while state.global_step < max_steps and state.epoch < num_epochs and stop.received is None:
            # Through the loader: load_state may have swapped in the checkpoint's (pickled) sampler.
            train_loader.set_epoch(state.epoch)
            skip = state.batches_in_epoch
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            t_data = time.perf_counter()
            for batch in loader:
                window.data_wait += time.perf_counter() - t_data
                state.batches_in_epoch += 1
                faults.update(batch)
                with accelerator.accumulate(model):
                    torch.manual_seed(derive_seed(config.seed, state.global_step, window.n, accelerator.process_index))
                    generators = sample_generators(config.seed, state.global_step, batch.index)
                    with distributed.autocast(accelerator, dtype):
                        out = callbacks.on_loss(state, model(batch.to(device, non_blocking=True), generators))
                    good = not distributed.any_process(accelerator, not torch.isfinite(out.loss.detach()).item())
                    window.record(out, good, batch.index)
                    grad_norm = optimizer_step(
                        accelerator, optimizer, lr_scheduler, params, out.loss, good, window, config.max_grad_norm
                    )
                if accelerator.sync_gradients:
                    logs = _end_step(accelerator, state, window, grad_norm, lr_scheduler, ema, params, config)
                    progress.update(1)
                    progress.set_postfix(loss=f"{logs.get('t/loss', float('nan')):.4f}", lr=f"{logs['lr']:.2e}")
                    result.last_logs = logs
                    callbacks.on_step_end(state, logs, window.indices)
                    window = _Window.new(device)
                    if state.nonfinite_in_a_row >= config.max_nonfinite_steps:
                        path = _save(accelerator, config, state, "non-finite losses")
                        raise TrainingDiverged(
                            f"stopped at step {state.global_step}: {state.nonfinite_in_a_row} non-finite losses in a "
                            f"row (updates skipped, weights unchanged since step "
                            f"{state.global_step - state.nonfinite_in_a_row}); checkpoint: {path}. Lower the "
                            "learning rate, use bf16/fp32, or check the data."
                        )
                    # Collective: a signal that reached one process only must stop (and save on) all of them.
                    if distributed.any_process(accelerator, stop.received is not None):
                        stop.received = stop.received or signal.SIGTERM
                        reason = f"signal {signal.Signals(stop.received).name}"
                        result.checkpoint, result.interrupted = _save(accelerator, config, state, reason), True
                        break
                    if config.checkpointing_steps and state.global_step % config.checkpointing_steps == 0:
                        result.checkpoint = _save(accelerator, config, state, "checkpointing_steps")
                    steps = config.validation_steps
                    if steps and state.global_step % steps == 0 and state.global_step < max_steps:
                        validation_scalars = validate()
                    if state.global_step >= max_steps:
                        break
                t_data = time.perf_counter()
            else:  # the epoch ran to its end
                logger.info("epoch %d done; %s", state.epoch, faults.summary())
                logger.info("speed caches: %s", accelerator.unwrap_model(model).cache_summary())
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                if config.checkpointing_epochs and state.epoch % config.checkpointing_epochs == 0:
                    result.checkpoint = _save(accelerator, config, state, "checkpointing_epochs")
    progress.close()
    result.global_step, result.nonfinite_total = state.global_step, state.nonfinite_total
    result.data_faults = dict(faults.counts)
    logger.info("%s", faults.summary())
    logger.info("speed caches: %s", accelerator.unwrap_model(model).cache_summary())
    if not result.interrupted:
        # ------------------------------------------------------------ validation, final folder, hub
        result.validation = validate() or validation_scalars
        _write_final(accelerator, model, parts, ema, params, config, state, result.validation, callbacks)
    accelerator.end_training()
    return result
