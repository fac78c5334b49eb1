import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference parity pack (``ANYTEXT2_PARITY_DIR``); tests that need it skip without it."""
    path = os.environ.get("ANYTEXT2_PARITY_DIR")
    if not path or not (Path(path) / "reference_meta.json").is_file():
        pytest.skip("ANYTEXT2_PARITY_DIR is not set to a parity pack (see shared/parity/README.md)")
    return Path(path)


@pytest.fixture()
def tiny():
    from anytext2_diffusers.testing import tiny_components

    return tiny_components(seed=0)
