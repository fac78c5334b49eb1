"""AnyText2 pipeline for diffusers' generic loader (needs `pip install anytext2-diffusers`).

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline", trust_remote_code=True)

`AnyText2Pipeline.from_pretrained(folder_or_repo)` loads the same pipeline without running this file.
"""

from anytext2_diffusers import AnyText2Pipeline

__all__ = ["AnyText2Pipeline"]
