"""diffusers' generic entry point loads every saved AnyText2 folder (the ``pipeline.py`` it carries)."""

import shutil

import pytest
from _generic_loader import assert_generic_loader_matches
from diffusers import DiffusionPipeline
from diffusers.utils import dynamic_modules_utils

from anytext2_diffusers import AnyText2Pipeline
from anytext2_diffusers.pipelines.community import COMMUNITY_PIPELINE_FILE, COMMUNITY_PIPELINE_SOURCE
from anytext2_diffusers.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipeline(0).save_pretrained(folder)
    return folder


def test_save_pretrained_folder_loads_through_diffusers_generic_entry_point(saved, tmp_path, monkeypatch):
    assert (saved / COMMUNITY_PIPELINE_FILE).read_text() == COMMUNITY_PIPELINE_SOURCE
    assert_generic_loader_matches(saved, tmp_path / "modules", monkeypatch)


def test_custom_pipeline_may_be_the_folder_itself(saved, tmp_path, monkeypatch):
    # diffusers looks for <custom_pipeline>/pipeline.py when custom_pipeline is a local folder
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    pipe = DiffusionPipeline.from_pretrained(saved, custom_pipeline=str(saved), trust_remote_code=True)
    assert type(pipe) is AnyText2Pipeline


def test_generic_entry_point_asks_for_trust_remote_code(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved, custom_pipeline="pipeline")


def test_recommended_loader_never_runs_the_module(saved, tmp_path):
    # AnyText2Pipeline.from_pretrained takes its class from the installed package, not from pipeline.py
    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    (folder / COMMUNITY_PIPELINE_FILE).write_text("raise RuntimeError('pipeline.py was executed')\n")
    assert type(AnyText2Pipeline.from_pretrained(folder)) is AnyText2Pipeline
