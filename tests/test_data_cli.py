"""Command-line contracts of the data tools (kept stable for users' scripts)."""

import json
import os
import subprocess
import sys
import time

import pytest

from anytext2_diffusers.data import cli, make_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_demo_data_is_fast_and_well_formed(tmp_path, capsys):
    t = time.perf_counter()
    path = make_demo_data(str(tmp_path / "d"), 8, seed=0)
    assert time.perf_counter() - t < 5
    with open(path) as f:
        content = json.load(f)
    assert len(content["data_list"]) == 8
    anns = [a for r in content["data_list"] for a in r["annotations"]]
    assert {a["language"] for a in anns} == {"Latin", "Chinese"}
    assert any(a["valid"] is False for a in anns)
    assert cli.make_demo_data_main(["--out", str(tmp_path / "e"), "--n", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("data_v1.2b.json")


def test_preview_writes_pngs_and_survives_bad_records(tmp_path, capsys):
    path = make_demo_data(str(tmp_path / "d"), 3, seed=0, with_faults=True)
    out = tmp_path / "preview"
    rc = cli.preview_main(
        [
            "--train_data",
            path,
            "--output_dir",
            str(out),
            "--num_samples",
            "7",
            "--seed",
            "1",
            "--cache_dir",
            str(tmp_path / "hf"),
        ]
    )
    assert rc == 0
    pngs = sorted(os.listdir(out))
    assert len(pngs) == 7 and all(p.endswith(".png") for p in pngs)
    printed = capsys.readouterr().out
    assert "data faults in 7 samples" in printed and "missing_image=1" in printed


def test_export_cli_writes_parquet(tmp_path, capsys):
    path = make_demo_data(str(tmp_path / "d"), 3, seed=0)
    rc = cli.export_main(
        ["--train_data", path, "--output_dir", str(tmp_path / "pq"), "--cache_dir", str(tmp_path / "hf")]
    )
    # the shards and the dataset card that lets load_dataset(folder) find them
    assert rc == 0 and sorted(os.listdir(tmp_path / "pq")) == ["README.md", "train-00000-of-00001.parquet"]
    with pytest.raises(SystemExit):
        cli.export_main(["--train_data", path])  # neither --output_dir nor --push_to_hub


def test_bench_data_prints_json_last_line(tmp_path):
    path = make_demo_data(str(tmp_path / "d"), 3, seed=0)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), HF_DATASETS_CACHE=str(tmp_path / "hf"))
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_data.py"),
            "--train_data",
            path,
            "--samples",
            "6",
            "--num_workers",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["samples_per_s"] > 0 and 0 < last["bytes_per_sample"] < 2.5 * 2**20
