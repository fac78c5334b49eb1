"""Torch's CPU thread count for CPU training runs, said once at start.

On a shared 2-core machine one thread per process trains the demo faster than two (measured in
docs/training.md, "CPU threads"): with every core already busy, a second torch thread only adds
contention. ``OMP_NUM_THREADS`` (or ``--cpu_threads``-style launchers that set it) always wins.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def _local_processes() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def choose_cpu_threads(default_per_process: int = 1) -> int | None:
    """Set torch's intra-op threads for a run without CUDA; returns the count (None on GPU runs)."""
    import torch

    if torch.cuda.is_available():
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        n = torch.get_num_threads()
        logger.info("CPU run: %d torch thread(s) per process (OMP_NUM_THREADS)", n)
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(default_per_process, cores // _local_processes()))
    torch.set_num_threads(n)
    logger.info(
        "CPU run: %d torch thread(s) per process (%d cores, %d local processes; set OMP_NUM_THREADS to change it)",
        n,
        cores,
        _local_processes(),
    )
    return n
