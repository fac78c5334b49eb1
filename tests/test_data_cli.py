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


def test_data_tools_share_the_cli_convention(tmp_path, capsys):
    """--output_dir / --num_samples / --no-x everywhere; old spellings work with one deprecation line."""
    assert cli.make_demo_data_main(["--output_dir", str(tmp_path / "a"), "--num_samples", "2"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    with open(path) as f:
        assert len(json.load(f)["data_list"]) == 2
    rc = cli.export_main(
        ["--train_data", path, "--output_dir", str(tmp_path / "pq"), "--no-embed_images", "--cache_dir", str(tmp_path)]
    )
    assert rc == 0
    capsys.readouterr()
    for argv, message in (
        (["--train_data", path, "--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--train_data", "nope.json", "--output_dir", "x"], "--train_data nope.json: file not found"),
        (["--train_data", path, "--output_dir", "x", "--max_rows", "3"], "unrecognized arguments: --max_rows"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.export_main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("anytext2-export-dataset: error: ") and message in err[0]


def test_old_export_hub_flags_map_onto_the_convention(tmp_path, capsys, monkeypatch):
    from anytext2_diffusers.data import anyword

    path = make_demo_data(str(tmp_path / "d"), 2, seed=0)
    seen = {}

    def fake_export(dd, output_dir, **kw):
        seen.update(kw, output_dir=output_dir)
        return {}

    monkeypatch.setattr(anyword, "export_parquet", fake_export)
    argv = ["--train_data", path, "--push_to_hub", "user/anyword", "--public", "--no_embed_images"]
    assert cli.export_main([*argv, "--cache_dir", str(tmp_path / "hf")]) == 0
    assert seen["push_to_hub"] == "user/anyword" and seen["private"] is False and seen["embed_images"] is False
    err = capsys.readouterr().err
    assert "--push_to_hub REPO is deprecated" in err and "--public is deprecated; use --no-hub_private" in err
    seen.clear()
    argv = ["--train_data", path, "--push_to_hub", "--hub_model_id", "user/anyword", "--cache_dir", str(tmp_path)]
    assert cli.export_main(argv) == 0 and seen["private"] is True  # datasets default to private
