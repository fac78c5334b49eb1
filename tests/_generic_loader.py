"""Check a saved folder against diffusers' generic entry point (shared by the save / training / conversion tests)."""

import os

import numpy as np
from diffusers import DiffusionPipeline
from diffusers.utils import dynamic_modules_utils

from anytext2_diffusers import AnyText2Pipeline
from anytext2_diffusers.pipelines.community import COMMUNITY_PIPELINE_FILE, COMMUNITY_PIPELINE_NAME
from anytext2_diffusers.testing import quick_generate


def assert_generic_loader_matches(folder, modules_cache, monkeypatch, size: int = 64) -> AnyText2Pipeline:
    """``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)`` gives an
    ``AnyText2Pipeline`` whose image for a fixed seed equals ``AnyText2Pipeline.from_pretrained``'s, exactly."""
    assert os.path.isfile(os.path.join(folder, COMMUNITY_PIPELINE_FILE)), f"{folder} has no {COMMUNITY_PIPELINE_FILE}"
    # diffusers copies the module into its modules cache before importing it: keep that copy in the test's tmp.
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(modules_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generic = DiffusionPipeline.from_pretrained(folder, custom_pipeline=COMMUNITY_PIPELINE_NAME, trust_remote_code=True)
    assert type(generic) is AnyText2Pipeline
    generic.set_progress_bar_config(disable=True)
    direct = AnyText2Pipeline.from_pretrained(folder)
    direct.set_progress_bar_config(disable=True)
    # same library, same weights, same seed, same thread count: the images are bit-identical
    np.testing.assert_array_equal(
        quick_generate(generic, size=size, output_type="np"), quick_generate(direct, size=size, output_type="np")
    )
    return generic
