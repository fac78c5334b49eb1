import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

PARITY_PACK_FILES = (
    "reference_meta.json",
    "reference_outputs.safetensors",
    "anytext2_tiny_state_dict.safetensors",
    "batch.npz",
    "batch.json",
    "tiny_anytext2.yaml",
    "tiny_clip",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: needs the reference parity pack (set automatically)")


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the parity pack, so CI can rerun exactly those against a second pack
    (``pytest -m parity``)."""
    for item in items:
        if "parity_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.parity)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference parity pack (``ANYTEXT2_PARITY_DIR``): tests that need it skip when it is not set, and
    fail (rather than hide the gap) when it is set to something that is not a pack."""
    path = os.environ.get("ANYTEXT2_PARITY_DIR")
    if not path:
        pytest.skip("ANYTEXT2_PARITY_DIR is not set (see shared/parity/README.md)")
    missing = [f for f in PARITY_PACK_FILES if not (Path(path) / f).exists()]
    if missing:
        pytest.fail(f"ANYTEXT2_PARITY_DIR={path} is not a parity pack: missing {', '.join(missing)}")
    return Path(path)


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
