"""AnyWord3M builder: filtering, splits, Parquet round trip, streaming, config faults."""

import json
import os

import datasets
import huggingface_hub
import numpy as np
import pytest

from anytext2_diffusers.data import (
    AnyText2TrainDataset,
    DataConfig,
    export_parquet,
    load_anyword,
    load_parquet,
    make_demo_data,
)
from anytext2_diffusers.data.anyword import AnnotationFileError


def write_json(path, records, data_root="imgs"):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"data_root": data_root, "data_list": records}, f, ensure_ascii=False)
    return str(path)


def rec(name, wm=None, **kw):
    r = {
        "img_name": name,
        "caption": f"caption of {name}",
        "annotations": [
            {
                "polygon": [[1, 1], [50, 1], [50, 20], [1, 20]],
                "text": "hi",
                "language": "Latin",
                "color": [1, 2, 3],
                "valid": True,
                "pos": [0, 1],
            }
        ],
    }
    if wm is not None:
        r["wm_score"] = wm
    r.update(kw)
    return r


def canon(rows):
    """Comparable form (NaN != NaN in Python, but the demo data has NaN polygon coordinates)."""
    return json.dumps(rows, sort_keys=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return make_demo_data(str(d), 6, seed=0, with_faults=True)


def test_two_files_with_wm_thresh_count_right(tmp_path):
    a = write_json(tmp_path / "a.json", [rec("a0.jpg", 0.1), rec("a1.jpg", 0.9), rec("a2.jpg"), rec("a3.jpg", 0.5)])
    b = write_json(tmp_path / "b.json", [rec("b0.jpg", 0.95), rec("b1.jpg", 0.2), {"caption": "no image name"}])
    dd = load_anyword([a, b], wm_thresh=0.5, cache_dir=str(tmp_path / "hf"))
    names = dd["train"]["img_name"]
    assert names == ["a0.jpg", "a2.jpg", "a3.jpg", "b1.jpg"]  # > 0.5 skipped, missing wm_score kept
    assert set(dd) == {"train"}
    dd = load_anyword([a, b], wm_thresh=1.0, cache_dir=str(tmp_path / "hf"))
    assert len(dd["train"]) == 6  # the record without img_name is dropped
    row = dd["train"][0]
    assert row["image"]["path"] == os.path.join(str(tmp_path), "imgs", "a0.jpg")
    assert row["annotations"][0]["polygon"] == [[1.0, 1.0], [50.0, 1.0], [50.0, 20.0], [1.0, 20.0]]
    assert row["annotations"][0]["pos"] == "[0, 1]" and row["wm_score"] == 0.1
    assert dd["train"][2]["wm_score"] is None


def test_percent_and_validation_splits(tmp_path):
    a = write_json(tmp_path / "a.json", [rec(f"a{i}.jpg") for i in range(10)])
    v = write_json(tmp_path / "v.json", [rec("v0.jpg"), rec("v1.jpg")])
    dd = load_anyword(a, percent=0.3, cache_dir=str(tmp_path / "hf"))
    assert dd["train"]["img_name"] == ["a0.jpg", "a1.jpg", "a2.jpg"]
    dd = load_anyword(a, v, cache_dir=str(tmp_path / "hf"))
    assert dd["validation"]["img_name"] == ["v0.jpg", "v1.jpg"] and len(dd["train"]) == 10
    d1 = load_anyword(a, validation_fraction=0.2, split_seed=5, cache_dir=str(tmp_path / "hf"))
    d2 = load_anyword(a, validation_fraction=0.2, split_seed=5, cache_dir=str(tmp_path / "hf2"))
    d3 = load_anyword(a, validation_fraction=0.2, split_seed=6, cache_dir=str(tmp_path / "hf"))
    assert len(d1["validation"]) == 2 and len(d1["train"]) == 8
    assert d1["validation"]["img_name"] == d2["validation"]["img_name"]
    assert not set(d1["validation"]["img_name"]) & set(d1["train"]["img_name"])
    assert d1["validation"]["img_name"] != d3["validation"]["img_name"]


def test_parquet_export_reload_identical_rows(tmp_path, demo):
    dd = load_anyword(demo, validation_fraction=0.3, cache_dir=str(tmp_path / "hf"))
    out = str(tmp_path / "pq")
    written = export_parquet(dd, out, embed_images=False, max_rows_per_shard=3)
    assert len(written["train"]) >= 2
    back = datasets.load_dataset("parquet", data_files={k: v for k, v in written.items()})
    for split in dd:
        assert canon(back[split].to_list()) == canon(dd[split].to_list())
    assert canon(load_parquet(out)["train"].to_list()) == canon(dd["train"].to_list())


def test_exported_folder_has_a_card_that_load_dataset_reads(tmp_path, demo):
    """``load_dataset(folder)`` (as ``load_dataset(repo_id)`` after an upload) finds splits from the card."""
    from huggingface_hub import DatasetCard

    dd = load_anyword(demo, validation_fraction=0.3, cache_dir=str(tmp_path / "hf"))
    out = tmp_path / "pq"
    export_parquet(dd, str(out), embed_images=False, max_rows_per_shard=3)
    card = DatasetCard.load(out / "README.md")
    assert card.data.configs[0]["data_files"][0] == {"split": "train", "path": "train-*.parquet"}
    assert "text-to-image" in card.data.task_categories and str(tmp_path) not in card.text
    back = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf2"))
    assert sorted(back) == sorted(dd)
    for split in dd:
        assert canon(back[split].to_list()) == canon(dd[split].to_list())


def test_parquet_with_embedded_images_renders_the_same(tmp_path, demo):
    dd = load_anyword(demo, cache_dir=str(tmp_path / "hf"))
    out = str(tmp_path / "pq")
    export_parquet(dd, out, embed_images=True)
    back = load_parquet(out)["train"]
    for a, b in zip(dd["train"].to_list(), back.to_list()):
        assert canon({k: v for k, v in a.items() if k != "image"}) == canon(
            {k: v for k, v in b.items() if k != "image"}
        )
        assert b["image"]["path"] == a["img_name"]  # relative to the data root, not the local path
        if os.path.exists(a["image"]["path"]):
            with open(a["image"]["path"], "rb") as f:
                assert b["image"]["bytes"] == f.read()
    s1 = AnyText2TrainDataset(dd["train"], DataConfig(), seed=0)[0]
    s2 = AnyText2TrainDataset(back, DataConfig(), seed=0)[0]
    assert np.array_equal(s1.image, s2.image) and np.array_equal(s1.glyphs, s2.glyphs)


def test_streaming_gives_the_same_rows(tmp_path, demo):
    dd = load_anyword(demo, cache_dir=str(tmp_path / "hf"))
    st = load_anyword(demo, cache_dir=str(tmp_path / "hf"), streaming=True)
    assert canon(list(st["train"])) == canon(dd["train"].to_list())


def test_annotation_file_faults(tmp_path):
    with pytest.raises(AnnotationFileError, match="nothere.json does not exist"):
        load_anyword(str(tmp_path / "nothere.json"), cache_dir=str(tmp_path / "hf"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"data_list": [')
    with pytest.raises(AnnotationFileError, match="bad.json is not readable JSON"):
        load_anyword(str(bad), cache_dir=str(tmp_path / "hf"))
    bad.write_text('{"something": 1}')
    with pytest.raises(AnnotationFileError, match="bad.json.*data_list"):
        load_anyword(str(bad), cache_dir=str(tmp_path / "hf"))


def test_malformed_polygon_is_kept_as_bad(tmp_path):
    a = write_json(
        tmp_path / "a.json",
        [
            rec(
                "a.jpg",
                annotations=[
                    {"polygon": [1, 2, 3], "text": "flat", "language": "Latin"},
                    {"polygon": [[1, 1], [9, 1], [9, 9]], "text": "ok", "language": "Latin", "color": "red"},
                ],
            )
        ],
    )
    row = load_anyword(a, cache_dir=str(tmp_path / "hf"))["train"][0]
    assert len(row["annotations"][0]["polygon"]) == 1  # rendered as a bad polygon
    assert row["annotations"][1]["color"] is None


def test_push_to_hub_and_hub_id_round_trip_with_the_hub_mocked(tmp_path, demo, monkeypatch):
    """No network here: datasets' upload is replaced by a local "hub" folder of Parquet shards per repo,
    and loading a repo id reads that folder, so the export CLI's push path and the training loader's
    Hub-id path are exercised end to end."""
    from types import SimpleNamespace

    from anytext2_diffusers.training.data import load_rows

    hub = tmp_path / "hub"
    pushed = []

    def fake_push(self, repo_id, split=None, private=None, embed_external_files=True, **kw):
        pushed.append((repo_id, split, private, embed_external_files))
        folder = hub / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        self.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"), batch_size=1000)

    real_load = datasets.load_dataset

    def fake_load(path, *args, **kwargs):
        folder = hub / path.replace("/", "--")
        if folder.is_dir():
            return load_parquet(str(folder))
        return real_load(path, *args, **kwargs)

    def fake_create_repo(repo_id, **kw):
        pushed.append(("create_repo", repo_id, kw))

    def fake_card_push(self, repo_id, **kw):
        pushed.append(("card", repo_id, kw, self.data.to_dict()))

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(huggingface_hub, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub", fake_card_push)
    dd = load_anyword(demo, validation_fraction=0.3, cache_dir=str(tmp_path / "hf"))
    export_parquet(dd, None, embed_images=True, push_to_hub="me/anyword-demo", private=True)
    # the repo and its card come first: datasets' push_to_hub keeps the card's text and adds its configs
    assert pushed[0] == ("create_repo", "me/anyword-demo", dict(repo_type="dataset", private=True, exist_ok=True))
    assert pushed[1][:3] == ("card", "me/anyword-demo", dict(repo_type="dataset")) and "configs" not in pushed[1][3]
    pushed = pushed[2:]
    assert sorted(p[1] for p in pushed) == ["train", "validation"]
    assert all(p[0] == "me/anyword-demo" and p[2] is True for p in pushed)

    config = SimpleNamespace(cache_dir=str(tmp_path / "hf"), dataset_percent=1.0, wm_thresh=1.0)
    rows = load_rows(["me/anyword-demo"], config)
    assert len(rows["train"]) == len(dd["train"]) and len(rows["validation"]) == len(dd["validation"])
    assert rows["train"]["img_name"] == dd["train"]["img_name"]
    assert all(isinstance(img["bytes"], bytes) and img["bytes"] for img in rows["train"]["image"])


def test_parquet_export_holds_no_local_absolute_path(tmp_path, demo):
    """Shards go to the Hub on push: neither the source column nor embedded image paths name local folders."""
    import pyarrow.parquet as pq

    dd = load_anyword(os.path.abspath(demo), cache_dir=str(tmp_path / "hf"))
    written = export_parquet(dd, str(tmp_path / "pq"), embed_images=True)
    local = os.path.dirname(os.path.dirname(os.path.abspath(demo)))
    table = pq.read_table(written["train"][0]).to_pylist()
    assert table and all(local not in row["source"] and local not in row["image"]["path"] for row in table)
    assert table[0]["source"] == f"{os.path.basename(os.path.dirname(os.path.abspath(demo)))}/{os.path.basename(demo)}"
