"""The community-pipeline module every saved AnyText2 folder carries.

diffusers' generic loader, ``DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline=...,
trust_remote_code=True)``, imports a ``pipeline.py`` from the folder (or Hub repo) and takes the one
``DiffusionPipeline`` subclass it finds there. Ours only imports the installed package's pipeline, so
the folder never holds a second copy of the code that could drift from it.
"""

from __future__ import annotations

import os

# diffusers' name for a folder's own pipeline module (``pipeline_loading_utils.CUSTOM_PIPELINE_FILE_NAME``);
# with it, ``custom_pipeline`` may be the folder itself, the repo id, or this module's name without ``.py``.
COMMUNITY_PIPELINE_FILE = "pipeline.py"
COMMUNITY_PIPELINE_NAME = COMMUNITY_PIPELINE_FILE[: -len(".py")]

COMMUNITY_PIPELINE_SOURCE = '''\
"""AnyText2 pipeline for diffusers' generic loader (needs `pip install anytext2-diffusers`).

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline", trust_remote_code=True)

`AnyText2Pipeline.from_pretrained(folder_or_repo)` loads the same pipeline without running this file.
"""

from anytext2_diffusers import AnyText2Pipeline

__all__ = ["AnyText2Pipeline"]
'''


def write_community_pipeline(folder: str | os.PathLike) -> str:
    """Write ``pipeline.py`` into a saved pipeline folder; returns its path."""
    path = os.path.join(os.fspath(folder), COMMUNITY_PIPELINE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(COMMUNITY_PIPELINE_SOURCE)
    return path
