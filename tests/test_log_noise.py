"""What a run prints is what the user needs: no DeepSpeed import without DeepSpeed, no empty
"kept in float32" warnings, no deprecated dtype argument."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import AutoencoderKL

from anytext2_diffusers.training import deepspeed_engine
from anytext2_diffusers.utils.dtype import cast_model, dtype_kwarg

deepspeed_engine.skip_import_unless_requested()
extract_model_from_parallel(torch.nn.Linear(1, 1))  # what accelerator.unwrap_model runs
print("deepspeed imported" if "deepspeed" in sys.modules else "deepspeed not imported")
vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=8)
cast_model(vae, torch.float16)
print(vae.dtype, sorted(dtype_kwarg(torch.float16)))
"""


def test_no_deepspeed_import_and_no_empty_float32_warning():
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "ACCELERATE_USE_DEEPSPEED": "false"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    assert "deepspeed not imported" in result.stdout
    assert "torch.float16 ['dtype']" in result.stdout  # diffusers >= the version that deprecates torch_dtype
    assert "should be kept in float32" not in result.stderr
    assert "Setting accelerator to CPU" not in result.stderr + result.stdout
