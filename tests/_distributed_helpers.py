"""Shared pieces of the multi-process tests (``test_distributed*.py``, ``test_fsdp.py``, ``test_deepspeed.py``):
launching the driver under ``accelerate launch`` with a config of ``configs/accelerate/``, the runs they share
(``Launches``: the 1-process reference and one 2-process run per launch config), and reading back weights and
per-rank records."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
from _training_helpers import Recorder, make_data, reset_accelerate, save_small_recognizer, tiny_config

from anytext2_diffusers.training import train

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_distributed_driver.py")
SRC = os.path.join(os.path.dirname(HERE), "src")
CONFIGS = os.path.join(os.path.dirname(HERE), "configs", "accelerate")
TIMEOUT = 300  # seconds per launch; a hung rendezvous fails the test instead of the suite

COMMON = dict(
    train_batch_size=2,  # per process; the 1-process reference uses 2 x 2 accumulation steps (or 4)
    max_train_steps=3,  # 8 samples / 4 per step: crosses an epoch boundary
    learning_rate=1e-4,
    loss_alpha=0.003,
    loss_beta=0.003,
    font_ocr_train_mode=False,
    mask_ratio=0.5,  # edit- and generation-mode samples
)


def make_assets(tmp_path_factory, name: str) -> dict:
    """A recognizer and synthetic data (8 training samples, 1 validation sample) in a fresh temporary folder."""
    root = tmp_path_factory.mktemp(name)
    return dict(
        root=root,
        ocr=save_small_recognizer(str(root / "ocr")),
        train=make_data(str(root / "train"), n=8, seed=0),
        val=make_data(str(root / "val"), n=1, seed=2),
    )


def driver_config(assets, name: str, **overrides) -> dict:
    """The driver's settings: ``COMMON`` + ``overrides`` on ``assets``, output in ``assets["root"] / name``."""
    return dict(
        COMMON,
        output_dir=str(assets["root"] / name),
        train_json=assets["train"],
        ocr_dir=assets["ocr"],
        cache_dir=str(assets["root"] / "hf_cache"),
        **overrides,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants. torch's elastic agent starts each worker in a session of its
    own, so neither killing the launcher nor its process group reaches them: a hung launch would leave its
    workers blocked in a collective (holding the output pipes, CPU and ports) for the rest of the suite."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pending, tree = [pid], []
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(config: dict, launcher_args: list[str], workdir) -> subprocess.CompletedProcess:
    """Write the driver's JSON config and run it under ``accelerate launch``; the output is returned."""
    path = os.path.join(str(workdir), f"config-{os.path.basename(config['output_dir'])}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # DeepSpeed JIT-builds its CPU shared-memory op under a file lock; a launch killed mid-build (a timeout)
    # leaves the lock behind and every later DeepSpeed start waits on it forever. One build folder per test
    # session: a killed build cannot hang the next session.
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), f"anytext2-torch-ext-{os.getpid()}"))
    env.pop("ACCELERATE_USE_CPU", None)  # the trainer itself must notice it runs on CPU processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, DRIVER, path]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_process_tree(popen.pid)
            stdout, stderr = popen.communicate()
            pytest.fail(f"{' '.join(cmd)} hung for {TIMEOUT} s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def launcher_args(config_file: str, port: int) -> list[str]:
    """``configs/accelerate/<config_file>`` with a free port."""
    return [
        "--config_file",
        os.path.join(CONFIGS, config_file),
        "--main_process_port",
        str(port),
        "--dynamo_backend",
        "no",
    ]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def read_ranks(output_dir: str) -> list[dict]:
    ranks = []
    for r in (0, 1):
        with open(os.path.join(output_dir, f"rank{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    return ranks


def train_one_process(assets, name: str, **overrides) -> tuple[str, Recorder]:
    """``train()`` in this process (1 thread) with ``COMMON`` + ``overrides``; (output_dir, recorder)."""
    config = tiny_config(str(assets["root"] / name), assets["train"], assets["ocr"], **{**COMMON, **overrides})
    recorder = Recorder()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, recorder)
    finally:
        torch.set_num_threads(n)
        reset_accelerate()
    return config.output_dir, recorder


def zero2_args(port: int, mixed_precision: str = "no") -> list[str]:
    """configs/accelerate/deepspeed_zero2.yaml as 2 CPU processes (the file says 8 GPUs and fp16)."""
    return [*launcher_args("deepspeed_zero2.yaml", port), "--num_processes", "2", "--mixed_precision", mixed_precision]


# The launch configs the shared tests run, each as 2 CPU processes on a free port.
LAUNCH_ARGS = {
    "ddp": lambda port: launcher_args("cpu_ddp_2.yaml", port),
    "fsdp": lambda port: launcher_args("cpu_fsdp_2.yaml", port),
    "deepspeed": zero2_args,
}
KINDS = [
    "ddp",
    "fsdp",
    pytest.param(
        "deepspeed",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (extra [deepspeed])"
        ),
    ),
]


class Launches:
    """The runs the multi-process tests share, each made once per session on first use: the 1-process
    reference (2 samples x 2 accumulation steps = the 2 processes' global batch of 4) and, per launch config,
    2 processes x 2 samples that checkpoint every step (keep 2), log to TensorBoard and validate at step 2."""

    def __init__(self, tmp_path_factory):
        self.assets = make_assets(tmp_path_factory, "launches")
        self._runs = {}

    def one_process(self) -> tuple[str, Recorder]:
        if "one" not in self._runs:
            self._runs["one"] = train_one_process(self.assets, "one", gradient_accumulation_steps=2)
        return self._runs["one"]

    def run(self, kind: str) -> tuple[dict, subprocess.CompletedProcess]:
        if kind not in self._runs:
            config = driver_config(
                self.assets,
                kind,
                checkpointing_steps=1,
                checkpoints_total_limit=2,
                report_to="tensorboard",
                validation_data=[self.assets["val"]],
                validation_steps=2,
            )
            self._runs[kind] = config, launch(config, LAUNCH_ARGS[kind](free_port()), self.assets["root"])
        return self._runs[kind]
