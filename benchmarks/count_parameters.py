"""Parameter counts of WriteNet and AttnX at the full SD1.5 size (built on the meta device, no download).

The reference counts come from the reference's key layout (``conversion.reference_layout``, generated
from the reference model's structure and the shipped ``anytext2_sd15.yaml``). With ``--parity_dir`` the
tiny model is also checked against the parity pack's real reference state dict. Last line: one JSON object.

    python benchmarks/count_parameters.py [--parity_dir ../shared/parity]
"""

import argparse
import json
import math
from pathlib import Path

import torch
import yaml
from diffusers import UNet2DConditionModel

from anytext2_diffusers import AnyText2AttnXModel, AnyText2ControlNetModel
from anytext2_diffusers.configs import config_path, sd15_config
from anytext2_diffusers.conversion.reference_layout import diffusion_layout
from anytext2_diffusers.testing import tiny_unet_config


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def counts_for(unet_config: dict) -> dict:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        writenet = AnyText2ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        attnx = AnyText2AttnXModel.from_unet(unet, load_weights_from_unet=False)
    return {"unet": count(unet), "writenet": count(writenet), "attnx": count(attnx)}


def reference_counts(shapes: dict) -> dict:
    """Parameter counts per reference sub-model from a {key: shape} listing."""
    totals = {"writenet": 0, "attnx": 0}
    for key, shape in shapes.items():
        n = math.prod(shape)
        if key.startswith("control_model."):
            totals["writenet"] += n
        elif key.startswith("model.diffusion_model.") and (".attn1x." in key or ".attn2x." in key):
            totals["attnx"] += n
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity_dir", type=Path, default=None)
    args = parser.parse_args()
    config = {k: v for k, v in sd15_config("unet").items() if not k.startswith("_")}
    result = {"sd15": counts_for(config)}
    with open(config_path("anytext2_sd15.yaml"), encoding="utf-8") as f:
        result["sd15_reference"] = reference_counts(diffusion_layout(yaml.safe_load(f)))
    for name, value in result["sd15"].items():
        ref = result["sd15_reference"].get(name)
        status = "" if ref is None else f"  reference {ref / 1e6:8.2f} M  {'equal' if ref == value else 'DIFFERENT'}"
        print(f"SD1.5 {name:9s} {value / 1e6:8.2f} M parameters{status}")
    if args.parity_dir:
        listing = {}
        for line in (args.parity_dir / "state_dict_keys.txt").read_text().splitlines():
            key, shape, _ = line.split("\t")
            listing[key] = tuple(json.loads(shape))
        tiny, ref = counts_for(tiny_unet_config()), reference_counts(listing)
        result["tiny"], result["tiny_reference"] = tiny, ref
        for name in ("writenet", "attnx"):
            status = "equal" if tiny[name] == ref[name] else "DIFFERENT"
            print(f"tiny  {name:9s} ours {tiny[name]:>9d}  reference {ref[name]:>9d}  {status}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
