"""Multi-node launch, simulated: 2 "machines" of 1 process each on 127.0.0.1 launched with
``configs/accelerate/multi_node.yaml`` (``--machine_rank r --main_process_ip 127.0.0.1``, as on a real
cluster) complete a short run as one gloo group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from _distributed_helpers import CONFIGS, DRIVER, SRC, TIMEOUT, free_port, kill_process_tree, read_ranks
from _training_helpers import make_data, save_small_recognizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    return dict(root=root, ocr=save_small_recognizer(str(root / "ocr")), train=make_data(str(root / "train"), 4, 0))


def test_two_nodes_over_loopback(assets):
    out = str(assets["root"] / "run")
    config = dict(
        output_dir=out,
        train_json=assets["train"],
        ocr_dir=assets["ocr"],
        cache_dir=str(assets["root"] / "hf_cache"),
        max_train_steps=2,
        train_batch_size=1,
        checkpointing_steps=2,
    )
    path = str(assets["root"] / "config.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # Both "machines" are this one: gloo's connections go over loopback, whatever address the hostname resolves to.
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env.pop("ACCELERATE_USE_CPU", None)
    # Each node writes to a file, not a pipe: the test waits on one node at a time, and an unread pipe would block
    # the other node once it printed 64 KiB (a normal run prints ~3 KiB; connection retries print more).
    nodes, log_paths = [], []
    for rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            os.path.join(CONFIGS, "multi_node.yaml"),
            # the fields multi_node.yaml marks EDIT, and what a CPU box needs instead of 2 x 8 GPUs:
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--num_processes",
            "2",  # in total over the 2 "machines"
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            DRIVER,
            path,
        ]
        log_paths.append(str(assets["root"] / f"node{rank}.log"))
        with open(log_paths[-1], "w", encoding="utf-8") as log:
            nodes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline, hung = time.monotonic() + TIMEOUT, []
    try:
        for rank, node in enumerate(nodes):
            try:
                node.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(rank)
    finally:
        for node in nodes:
            if node.poll() is None:  # with the training process it launched (in a session of its own)
                kill_process_tree(node.pid)
                node.wait()
    logs = [open(p, encoding="utf-8", errors="replace").read() for p in log_paths]
    if hung:  # what each node had printed, so a hang can be told from a slow machine
        shown = "\n".join(f"--- node {rank}:\n{log[-3000:]}" for rank, log in enumerate(logs))
        pytest.fail(f"node(s) {hung} still running after {TIMEOUT} s:\n{shown}")
    for rank, (node, log) in enumerate(zip(nodes, logs)):
        assert node.returncode == 0, f"node {rank} failed:\n{log[-5000:]}"
    ranks = read_ranks(out)
    assert [(r["rank"], r["world_size"], r["backend"], r["global_step"]) for r in ranks] == [
        (0, 2, "gloo", 2),
        (1, 2, "gloo", 2),
    ]
    assert not set(ranks[0]["indices"]["1"]) & set(ranks[1]["indices"]["1"])
    assert os.path.isdir(os.path.join(out, "checkpoint-2")) and os.path.isfile(os.path.join(out, "model_index.json"))
