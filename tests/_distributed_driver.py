"""Entry point of the multi-process tests: ``accelerate launch ... _distributed_driver.py CONFIG.json``.

Runs ``train()`` on the tiny stack with the settings of CONFIG.json (``tiny_config`` keywords) and writes
``output_dir/rank{process_index}.json``: the dataset indices of every optimizer step on this process, the
step logs, and the process group this process saw.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _training_helpers import tiny_config  # noqa: E402

from anytext2_diffusers.training import TrainingCallback, train  # noqa: E402


class Recorder(TrainingCallback):
    def __init__(self, nan_at_steps=()):
        self.indices, self.logs, self.group = {}, {}, {}
        self.nan_at_steps = set(nan_at_steps)

    def on_loss(self, state, output):  # fault injection: a non-finite loss in the (0-based) steps given
        if state.global_step in self.nan_at_steps:
            # added, not multiplied: the gradients stay finite, so only the loop can keep this step out
            output.loss = output.loss + float("nan")
        return output

    def on_step_end(self, state, logs, batch_indices):
        import torch.distributed as dist
        from accelerate.state import AcceleratorState

        self.indices[state.global_step] = list(batch_indices)
        self.logs[state.global_step] = dict(logs)
        if dist.is_initialized():  # the group as training saw it (end_training may tear it down)
            self.group = dict(world_size=dist.get_world_size(), rank=dist.get_rank(), backend=dist.get_backend())
            state = AcceleratorState()
            self.group["distributed_type"] = str(state.distributed_type).split(".")[-1]
            if state.deepspeed_plugin is not None:  # the DeepSpeed config the engine was built with
                ds = state.deepspeed_plugin.deepspeed_config
                keys = ("gradient_clipping", "gradient_accumulation_steps", "train_batch_size", "zero_optimization")
                self.group["deepspeed_config"] = {k: ds.get(k) for k in keys}


def main(path: str) -> None:
    torch.set_num_threads(1)
    with open(path, encoding="utf-8") as f:
        kw = json.load(f)
    nan_at_steps = kw.pop("nan_at_steps", ())
    fail_save_at_step = kw.pop("fail_save_at_step", None)
    if fail_save_at_step is not None:  # a main-process-only write failure (a full disk) at that step's save
        from anytext2_diffusers.training import checkpointing

        save = checkpointing.TrainingState.save

        def failing_save(self, folder):
            if self.global_step == fail_save_at_step:
                raise OSError(28, "No space left on device (injected)")
            return save(self, folder)

        checkpointing.TrainingState.save = failing_save
    config = tiny_config(kw.pop("output_dir"), kw.pop("train_json"), kw.pop("ocr_dir"), **kw)
    recorder = Recorder(nan_at_steps)
    result = train(config, recorder)
    info = dict(
        world_size=recorder.group.get("world_size", 1),
        backend=recorder.group.get("backend"),
        distributed_type=recorder.group.get("distributed_type", "NO"),
        deepspeed_config=recorder.group.get("deepspeed_config"),
        rank=recorder.group.get("rank", 0),
        is_main_process=result.is_main_process,
        global_step=result.global_step,
        indices=recorder.indices,
        logs=recorder.logs,
    )
    with open(os.path.join(config.output_dir, f"rank{info['rank']}.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1])
