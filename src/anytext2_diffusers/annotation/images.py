"""Find and decode the user's images; failures become a reason string, never an exception."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Shorter sides below this cannot hold a readable line (the recognizer's input is 48 px high).
MIN_IMAGE_SIDE = 16


@dataclass(frozen=True)
class ImageEntry:
    """``path`` on disk; ``name`` relative to the common root (the JSON's ``img_name``)."""

    path: str
    name: str


def find_images(dirs) -> tuple[str, list[ImageEntry]]:
    """All image files under ``dirs`` (recursive, sorted) and their common root folder.

    Files whose extension is not an image's are ignored here; a file with an image extension that
    does not decode is skipped (and counted) later."""
    dirs = [os.path.abspath(d) for d in dirs]
    for d in dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--images: {d} is not a folder")
    paths = set()
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.add(os.path.join(root, f))
    root = os.path.commonpath(dirs) if len(dirs) > 1 else dirs[0]
    entries = [ImageEntry(p, os.path.relpath(p, root).replace(os.sep, "/")) for p in sorted(paths)]
    return root, entries


def decode_image(path: str) -> tuple[np.ndarray | None, str | None]:
    """RGB uint8 (H, W, 3), exactly the pixels the training loader reads (``convert("RGB")``, no EXIF
    rotation, so polygons stay in the stored pixel frame), or (None, reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                rgb = np.asarray(im.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "too_large"
    except Exception:  # noqa: BLE001 - any decoder error (truncated, not an image, ...) is a skip
        return None, "unreadable"
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        return None, "too_small"
    return np.ascontiguousarray(rgb), None


class ImageFolderDataset(torch.utils.data.Dataset):
    """Decodes in DataLoader workers; item = (index, image or None, skip reason or None)."""

    def __init__(self, entries: list[ImageEntry]):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        image, reason = decode_image(self.entries[index].path)
        return index, image, reason
