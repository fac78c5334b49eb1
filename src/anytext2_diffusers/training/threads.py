"""Torch's CPU thread count for CPU training runs, said once at start.

Torch starts one thread per core; on a machine whose cores are already busy the extra threads only
contend. Measured with the demo on a shared 2-core machine (load average ~22): 14.9 s per step with 1
torch thread, ~230 s per step with 2. So a CPU run takes the cores the load average leaves free, split
over the local processes, at least 1; ``OMP_NUM_THREADS`` always wins.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def _local_processes() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def pick_threads(cores: int, load: float, processes: int) -> int:
    """Threads per process: the idle cores (cores minus the 1-minute load average), shared by the processes."""
    free = max(1, int(cores - load + 0.5))
    return max(1, min(cores, free) // max(1, processes))


def choose_cpu_threads() -> int | None:
    """Set torch's intra-op threads for a run without CUDA; returns the count (None on GPU runs)."""
    import torch

    if torch.cuda.is_available():
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        n = torch.get_num_threads()
        logger.info("CPU run: %d torch thread(s) per process (OMP_NUM_THREADS)", n)
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = pick_threads(cores, load, _local_processes())
    torch.set_num_threads(n)
    logger.info(
        "CPU run: %d torch thread(s) per process (%d cores, load average %.1f, %d local processes; "
        "set OMP_NUM_THREADS to choose)",
        n,
        cores,
        load,
        _local_processes(),
    )
    return n
