"""The Accelerate training loop: read it top to bottom.

setup (accelerator, components, trainable set, optimizer, data, resume) -> for each batch: one loss,
one backward, an optimizer step per accumulation window -> log, checkpoint, validate -> final
pipeline folder, model card, optional Hub upload.

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

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data import FaultCounter
from . import checkpointing as ckpt
from . import deepspeed_engine, fsdp, full_weights, lora, precision, resume_check
from .components import TRAINABLE_COMPONENTS, load_components
from .data import build_datasets, make_loader
from .output import FinalSaveError, save_pipeline_folder
from .run_lock import lock_output_dir
from .speed import sample_generators, setup_training_model
from .trainable import describe

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


def _any_process(accelerator, flag: bool) -> bool:
    value = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(value, reduction="sum").item() > 0


def _seed_step(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for this micro-step; also reseeds the global torch RNG (dropout) from the same numbers."""
    words = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint64)
    torch.manual_seed(int(words[1]) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.Generator().manual_seed(int(words[0]) & 0x7FFF_FFFF_FFFF_FFFF)


def _new_window(device) -> dict:
    """Accumulators of one optimizer step (its micro-batches)."""
    return dict(
        loss=torch.zeros(4, device=device), n=0, good=0, bad=False, indices=[], data_wait=0.0, t0=time.perf_counter()
    )


def _cpu_processes() -> bool:
    """Launched as several processes (torchrun / ``accelerate launch --multi_gpu``) on a machine without
    CUDA: Accelerator must be told ``cpu=True`` to form a gloo process group, else every process would
    silently train alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _accelerator_placement() -> dict:
    """``Accelerator`` arguments for where the processes run. Several CPU processes get ``cpu=True`` (a
    gloo group, see ``_cpu_processes``), except under DeepSpeed (``ACCELERATE_USE_DEEPSPEED``, set by
    ``accelerate launch`` with a DeepSpeed config): accelerate ignores DeepSpeed when ``cpu=True`` and would
    silently run DDP, and with neither flag nor backend it counts 1 process per rank. So DeepSpeed on CPU
    processes keeps ``cpu=False`` and names the gloo backend, which accelerate hands to
    ``deepspeed.comm.init_distributed`` (DeepSpeed's CPU accelerator, auto-detected without CUDA)."""
    if not _cpu_processes():
        return {}
    if deepspeed_engine.requested():
        return dict(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return dict(cpu=True)


def _step_logs(accelerator, window: dict, grad_norm, lr_scheduler, state, config) -> dict:
    """Scalars of one optimizer step: losses averaged over its micro-batches and the processes (left out
    when the step was skipped), lr, gradient norm, throughput and time spent waiting for data."""
    logs = {}
    if not window["bad"]:
        means = (accelerator.reduce(window["loss"], reduction="mean") / max(1, window["good"])).tolist()
        logs = dict(zip(("t/sim", "t/ocr", "t/ctc", "t/loss"), means))
    samples = window["n"] * config.train_batch_size * accelerator.num_processes
    logs.update(
        {
            "lr": lr_scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "samples_per_sec": samples / (time.perf_counter() - window["t0"]),
            "data_wait_sec": window["data_wait"],
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


def _register_checkpoint_hooks(accelerator, groups: dict) -> None:
    """accelerate's save_state/load_state write and read each trainable component with save_pretrained
    (diffusers' train_controlnet.py pattern) instead of one opaque state dict.

    Under FSDP accelerate saves and loads the sharded model itself (the load hook then gets no models); the
    save hook still writes the components, from the gathered full state dict."""
    saved = [name for name in TRAINABLE_COMPONENTS if name in groups]

    def save_hook(models, weights, output_dir):
        for model in models:
            full = full_weights.gather(accelerator, model)  # collective; None when the module holds them
            if not accelerator.is_main_process:
                continue
            for name in saved:
                component = getattr(accelerator.unwrap_model(model), name)
                gathered = None if full is None else full_weights.component_state_dict(full, name)
                if lora.has_adapter(component):  # adapter + fully trained parameters only (small)
                    folder = os.path.join(output_dir, f"{name}_lora")
                    lora.save_adapter(component, folder, with_trained_base=True, state_dict=gathered)
                elif gathered is not None:
                    full_weights.save_component(component, os.path.join(output_dir, name), gathered)
                else:
                    component.save_pretrained(os.path.join(output_dir, name))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            for name in saved:
                component = getattr(model, name)
                if lora.has_adapter(component):
                    lora.load_adapter(component, os.path.join(input_dir, f"{name}_lora"))
                    continue
                folder = os.path.join(input_dir, name)
                if not os.path.isdir(folder):
                    raise FileNotFoundError(
                        f"{input_dir} has no {name}/ (was it written with other trainable switches?)"
                    )
                loaded = type(component).from_pretrained(input_dir, subfolder=name)
                component.load_state_dict(loaded.state_dict())
                del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _prepare_demo(config, accelerator) -> None:
    """--demo without data: synthesise AnyWord-format train/validation sets into output_dir/demo_data."""
    from ..data import make_demo_data

    root = os.path.join(config.output_dir, "demo_data")
    train_json = os.path.join(root, "train", "data_v1.2b.json")
    val_json = os.path.join(root, "validation", "data_v1.2b.json")
    if accelerator.is_main_process and not (os.path.isfile(train_json) and os.path.isfile(val_json)):
        size = max(256, config.resolution)
        make_demo_data(os.path.dirname(train_json), n=config.demo_samples, seed=config.seed, resolution=size)
        make_demo_data(
            os.path.dirname(val_json), n=max(2, config.num_validation_images), seed=config.seed + 1000, resolution=size
        )
    accelerator.wait_for_everyone()
    config.train_data = [train_json]
    config.validation_data = [val_json]


def train(config, callbacks: TrainingCallback | None = None) -> TrainResult:
    """Train; the main process holds the output folder's lock (``run_lock``) from start to end."""
    deepspeed_engine.skip_import_unless_requested()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        **_accelerator_placement(),
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)  # 4 file names per checkpoint
    if not accelerator.is_main_process:  # one voice: other ranks report warnings and errors only
        for name in ("anytext2_diffusers", "accelerate"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with lock_output_dir(accelerator, config.output_dir):
        return _train(config, callbacks or TrainingCallback(), accelerator)


def _train(config, callbacks: TrainingCallback, accelerator) -> TrainResult:
    from .hub import push_to_hub, write_model_card
    from .validation import run_validation

    config.mixed_precision = accelerator.mixed_precision  # the saved configuration states the precision used
    fsdp.enable_on_cpu_processes(accelerator)
    fsdp.check_supported(accelerator, config)
    precision.enable_native_fp16(accelerator)  # a CPU fp16 run takes the GPU's autocast + GradScaler path
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
    device = accelerator.device
    model, groups = setup_training_model(
        parts, config, device, _weight_dtype(accelerator), upcast_buffers=not deepspeed_engine.active(accelerator)
    )
    trainable = {name: parts[name] for name in TRAINABLE_COMPONENTS}
    logger.info(
        "trainable parameters:\n%s",
        describe(
            groups, {**trainable, "vae": parts["vae"], "text_encoder": parts["text_encoder"], "ocr": parts["ocr"]}
        ),
    )
    params = [p for group in groups.values() for _, p in group]

    # ---------------------------------------------------------------- optimizer, data, schedule
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in group], "name": name} for name, group in groups.items()],
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    train_loader = make_loader(train_set, config, shuffle=True)[0]
    val_loader = make_loader(val_set, config, shuffle=False)[0] if val_set is not None else None
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    _register_checkpoint_hooks(accelerator, groups)
    deepspeed_engine.set_clipping(accelerator, config.max_grad_norm)
    model, optimizer, train_loader, lr_scheduler = accelerator.prepare(model, optimizer, train_loader, lr_scheduler)
    if fsdp.active(accelerator):  # prepare replaced the parameters with DTensor shards
        params = [p for p in model.parameters() if p.requires_grad]
    ema = None
    if config.use_ema:
        ema = EMAModel(params, decay=config.ema_decay)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=_tracker_config(config))

    # ---------------------------------------------------------------- resume
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
            rates = resume_check.reset_lr_schedule(lr_scheduler, lr)
            logger.info("--reset_lr_scheduler: base rate %g, now %g at step %d", lr, rates[0], state.global_step)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            resume,
            state.global_step,
            state.epoch,
            state.batches_in_epoch,
        )
    if state.batches_in_epoch >= len(train_loader):
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0

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

    def save(reason: str) -> str | None:
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

    def validate() -> dict:
        scalars = {}
        # Under FSDP every process gathers the parameters (a collective); the main process validates.
        with fsdp.unsharded(accelerator, model, enabled=val_set is not None):
            if accelerator.is_main_process and val_set is not None:
                if ema is not None:
                    ema.store(params)
                    ema.copy_to(params)
                with deepspeed_engine.autocast(accelerator, _weight_dtype(accelerator)):
                    scalars = run_validation(
                        accelerator,
                        accelerator.unwrap_model(model),
                        parts,
                        val_loader,
                        val_set,
                        config,
                        state.global_step,
                    )
                if ema is not None:
                    ema.restore(params)
                accelerator.log(scalars, step=state.global_step)
                logger.info(
                    "validation at step %d: %s",
                    state.global_step,
                    ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()),
                )
        accelerator.wait_for_everyone()
        return scalars

    # ---------------------------------------------------------------- the loop
    result = TrainResult(
        global_step=state.global_step, output_dir=config.output_dir, is_main_process=accelerator.is_main_process
    )
    progress = tqdm(
        total=max_steps, initial=state.global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    faults = FaultCounter()
    window = _new_window(device)
    validation_scalars: dict = {}
    model.train()
    with _StopSignal() as stop:
        while state.global_step < max_steps and state.epoch < num_epochs and stop.received is None:
            # Through the loader: load_state may have swapped in the checkpoint's (pickled) sampler.
            train_loader.set_epoch(state.epoch)
            loader = (
                accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
                if state.batches_in_epoch
                else train_loader
            )
            t_data = time.perf_counter()
            for batch in loader:
                window["data_wait"] += time.perf_counter() - t_data
                state.batches_in_epoch += 1
                faults.update(batch)
                with accelerator.accumulate(model):
                    _seed_step(config.seed, state.global_step, window["n"], accelerator.process_index)  # dropout
                    generators = sample_generators(config.seed, state.global_step, batch.index)
                    with deepspeed_engine.autocast(accelerator, _weight_dtype(accelerator)):
                        out = callbacks.on_loss(state, model(batch.to(device, non_blocking=True), generators))
                    good = not _any_process(accelerator, not torch.isfinite(out.loss.detach()).item())
                    window["bad"] = window["bad"] or not good
                    # DeepSpeed steps inside backward at the window's last micro-step: freeze that step instead
                    freeze = window["bad"] and accelerator.sync_gradients
                    with deepspeed_engine.frozen_step(accelerator, optimizer, freeze):
                        if good:
                            accelerator.backward(out.loss)
                        else:  # every process still runs a backward (DDP expects one); the update is dropped
                            accelerator.backward(torch.nan_to_num(out.loss) * 0.0)
                    if good:
                        window["loss"] += (
                            torch.stack([out.simple.mean(), out.ocr.mean(), out.ctc.mean(), out.loss]).detach().float()
                        )
                        window["good"] += 1
                    window["n"] += 1
                    window["indices"] += batch.index.tolist()
                    grad_norm = None
                    if accelerator.sync_gradients:
                        limit = config.max_grad_norm if config.max_grad_norm else float("inf")
                        grad_norm = accelerator.clip_grad_norm_(params, limit)
                        # DeepSpeed: the engine already clipped and stepped in accelerator.backward (its fp16
                        # scaler skips overflows; a bad window stepped with learning rate 0, see
                        # deepspeed_engine.frozen_step); this returns its pre-clipping norm as a float, and
                        # optimizer.step() is a no-op.
                        finite = grad_norm is None or math.isfinite(float(grad_norm))
                        if not window["bad"] and (finite or accelerator.scaler is not None):
                            # fp16 GradScaler: an overflow skips the update and lowers the scale (expected in
                            # the first steps; not a fault), so the scaler must see every finite-loss step.
                            optimizer.step()
                            window["overflow"] = accelerator.scaler is not None and optimizer.step_was_skipped
                        else:
                            window["bad"] = True
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)

                if accelerator.sync_gradients:
                    state.global_step += 1
                    state.samples_seen += window["n"] * config.train_batch_size * accelerator.num_processes
                    if window["bad"]:
                        state.nonfinite_total += 1
                        state.nonfinite_in_a_row += 1
                        logger.warning(
                            "step %d: non-finite loss or gradient, update skipped (%d in a row, %d total)",
                            state.global_step,
                            state.nonfinite_in_a_row,
                            state.nonfinite_total,
                        )
                    elif window.get("overflow"):
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
                    progress.update(1)
                    progress.set_postfix(loss=f"{logs.get('t/loss', float('nan')):.4f}", lr=f"{logs['lr']:.2e}")
                    result.last_logs = logs
                    callbacks.on_step_end(state, logs, window["indices"])
                    window = _new_window(device)

                    if state.nonfinite_in_a_row >= config.max_nonfinite_steps:
                        path = save("non-finite losses")
                        raise TrainingDiverged(
                            f"stopped at step {state.global_step}: {state.nonfinite_in_a_row} non-finite losses in a "
                            f"row (updates skipped, weights unchanged since step "
                            f"{state.global_step - state.nonfinite_in_a_row}); checkpoint: {path}. Lower the "
                            "learning rate, use bf16/fp32, or check the data."
                        )
                    # Collective: a signal that reached one process only must stop (and save on) all of them.
                    if _any_process(accelerator, stop.received is not None):
                        stop.received = stop.received or signal.SIGTERM
                        result.checkpoint = save(f"signal {signal.Signals(stop.received).name}")
                        result.interrupted = True
                        break
                    if config.checkpointing_steps and state.global_step % config.checkpointing_steps == 0:
                        result.checkpoint = save("checkpointing_steps")
                    if (
                        config.validation_steps
                        and state.global_step % config.validation_steps == 0
                        and state.global_step < max_steps
                    ):
                        validation_scalars = validate()
                    if state.global_step >= max_steps:
                        break
                t_data = time.perf_counter()
            else:  # the epoch ran to its end
                logger.info("epoch %d done; %s", state.epoch, faults.summary())
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                if config.checkpointing_epochs and state.epoch % config.checkpointing_epochs == 0:
                    result.checkpoint = save("checkpointing_epochs")
    progress.close()
    result.global_step, result.nonfinite_total = state.global_step, state.nonfinite_total
    result.data_faults = dict(faults.counts)
    logger.info("%s", faults.summary())
    if result.interrupted:
        accelerator.end_training()
        return result

    # ---------------------------------------------------------------- validation, final folder, hub
    validation_scalars = validate() or validation_scalars
    result.validation = validation_scalars
    # The final folder is written from whole float32 parameters: gather them where the model does not hold them.
    full = full_weights.gather(accelerator, model)  # collective
    if full is not None and accelerator.is_main_process:
        full_weights.materialize(accelerator.unwrap_model(model), full)
    del full
    final_error = None
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        callbacks.on_train_end(parts)
        try:
            if lora.lora_components(config):
                lora.save_final(parts, config, save_pipeline_folder)  # base components + adapters, or merged
            else:
                save_pipeline_folder(parts, config.output_dir)
        except Exception as err:  # noqa: BLE001 - a checkpoint keeps the steps, then one line (FinalSaveError)
            final_error = err
            if ema is not None:
                ema.restore(params)
    if ckpt.failed_anywhere(accelerator, final_error is not None):
        kept = os.path.join(config.output_dir, f"{ckpt.PREFIX}{state.global_step}")
        kept = kept if os.path.isdir(kept) else save("the final folder failed")
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
    accelerator.end_training()
    return result
