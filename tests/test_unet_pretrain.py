"""The demo recipe's UNet pretraining (plain text-to-image diffusion): every parameter trains, a resumed run
is the same run, a checkpoint of another architecture is refused."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from anytext2_diffusers.testing import tiny_components
from anytext2_diffusers.training.unet_pretrain import UNetPretrainConfig, encode_captions, pretrain_unet

CAPTIONS = ["a shop sign with the words OPEN", "a street banner. Plain", "", "a shop sign with the words OPEN"]


def _images():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))


def _parts():
    parts = tiny_components(0)
    parts["vae"].register_to_config(scaling_factor=0.5)
    return parts


def _config(path, steps):
    return UNetPretrainConfig(output_dir=str(path), resolution=64, batch_size=3, max_train_steps=steps, logging_steps=1)


def test_every_parameter_trains_and_a_resumed_run_is_the_same_run(tmp_path):
    start = _parts()["unet"].state_dict()
    straight = pretrain_unet(_config(tmp_path / "a", 4), _parts(), _images(), CAPTIONS)["unet"]
    pretrain_unet(_config(tmp_path / "b", 2), _parts(), _images(), CAPTIONS)
    resumed = pretrain_unet(_config(tmp_path / "b", 4), _parts(), _images(), CAPTIONS)["unet"]
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name  # same images, posterior samples, timesteps, noise and optimizer state
    unchanged = [n for n, p in straight.state_dict().items() if torch.equal(p, start[n])]
    assert not unchanged  # encoder, mid block and time embedding train too (unlike AnyText2's --no-sd_locked)
    rows = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "b" / "unet" / "config.json").is_file()


def test_a_checkpoint_of_another_unet_is_refused(tmp_path):
    pretrain_unet(_config(tmp_path, 1), _parts(), _images(), CAPTIONS)
    parts = _parts()
    parts["unet"].register_to_config(norm_num_groups=16)  # same weight shapes: only the recorded config can tell
    with pytest.raises(ValueError, match="checkpoint.pt: field unet_config.norm_num_groups is 32"):
        pretrain_unet(dataclasses.replace(_config(tmp_path, 2)), parts, _images(), CAPTIONS)
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        pretrain_unet(_config(tmp_path / "c", 1), _parts(), _images(), CAPTIONS[:3])


def test_captions_are_encoded_once_each_and_row_0_is_the_empty_prompt():
    parts = _parts()
    states, rows = encode_captions(parts["text_encoder"], parts["tokenizer"], CAPTIONS, "cpu")
    assert len(states) == 3 and rows.tolist()[2] == 0 and rows[0] == rows[3] != rows[1]
    empty = parts["text_encoder"](parts["tokenizer"]([""], padding="max_length", return_tensors="pt").input_ids)[0]
    assert torch.equal(states[0], empty[0])
