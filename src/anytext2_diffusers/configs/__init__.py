"""Shipped configuration files: SD1.5 component configs, the AnyText2 reference model yaml."""

import json
from importlib import resources


def config_path(*parts: str) -> str:
    """Filesystem path of a packaged config file, e.g. ``config_path("sd15", "unet_config.json")``."""
    return str(resources.files(__package__).joinpath(*parts))


def load_json(*parts: str) -> dict:
    with open(config_path(*parts), encoding="utf-8") as f:
        return json.load(f)


def sd15_config(component: str) -> dict:
    """The SD1.5 config of ``component`` (``unet``, ``vae``, ``text_encoder`` or ``scheduler``)."""
    return load_json("sd15", f"{component}_config.json")
