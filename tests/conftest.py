import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference parity pack (``ANYTEXT2_PARITY_DIR``); tests that need it skip without it."""
    from _parity import pack_dir

    path = pack_dir()
    if path is None:
        pytest.skip("ANYTEXT2_PARITY_DIR is not set to a parity pack (see shared/parity/README.md)")
    return path


@pytest.fixture()
def tiny():
    from anytext2_diffusers.testing import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core box one thread is several times faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    """A complete tiny AnyText2Pipeline (random weights), shared by a test module."""
    from anytext2_diffusers.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def launches(tmp_path_factory):
    """The multi-process runs shared by test_distributed.py, test_fsdp.py and test_deepspeed.py (made lazily)."""
    from _distributed_helpers import Launches

    return Launches(tmp_path_factory)
