"""The conversion command checks its options before loading anything: one error line, no files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import sys
from anytext2_diffusers.conversion.cli import main
try:
    sys.exit(main(sys.argv[1:]))
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--from_original", "w.ckpt", "--output_dir", "out"], "--from_original needs --clip_model_name_or_path"),
        (["--from_original", "missing.ckpt", "--output_dir", "out"], "--from_original missing.ckpt: file not found"),
        (["--from_sd15", "sd", "--to_original", "o.safetensors"], "exactly one of"),
        (["--to_original", "o.safetensors", "--pipeline_dir", "."], "no model_index.json"),
        (["--to_original", "o.safetensors", "--pipeline_dir", ".", "--original_config", "x.yaml"], "x.yaml"),
        (["--from_sd15", "w.ckpt", "--output_dir", "out", "--dtyp", "fp16"], "unrecognized arguments: --dtyp"),
    ],
)
def test_convert_errors_are_one_line_before_loading(tmp_path, args, expected):
    (tmp_path / "w.ckpt").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anytext2-convert: error: ") and expected in lines[0], lines
    assert "torch not imported" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["w.ckpt"]
