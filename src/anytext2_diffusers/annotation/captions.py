"""Captions for annotated images: a user file, a captioner callable, or empty."""

from __future__ import annotations

import csv
import json
import os

CAPTION_COLUMNS = ("caption", "text")  # captions.jsonl uses "caption"; imagefolder metadata often "text"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "captions.jsonl")


class CaptionFileError(ValueError):
    """The caption file cannot be used; the message names the file, the line and the field."""


def _caption_of(row: dict, path: str, where: str) -> tuple[str, str]:
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        raise CaptionFileError(f"{path}: {where}: no 'file_name' field")
    for col in CAPTION_COLUMNS:
        if col in row and row[col] is not None:
            return name.replace("\\", "/"), str(row[col])
    raise CaptionFileError(f"{path}: {where}: no 'caption' (or 'text') field for {name}")


def read_captions(path: str) -> dict[str, str]:
    """``file_name -> caption`` from ``captions.jsonl`` / ``metadata.jsonl`` (one JSON object a line)
    or ``metadata.csv`` (the layout of ``datasets``' imagefolder)."""
    out: dict[str, str] = {}
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                name, cap = _caption_of(row, path, f"line {n}")
                out[name] = cap
        return out
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CaptionFileError(f"{path}: line {n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise CaptionFileError(f"{path}: line {n}: expected an object with file_name and caption")
            name, cap = _caption_of(row, path, f"line {n}")
            out[name] = cap
    return out


def find_metadata_file(dirs) -> str | None:
    """The imagefolder-style caption file lying in the (single) image folder, if any."""
    if len(dirs) != 1:
        return None
    for name in METADATA_FILES:
        p = os.path.join(dirs[0], name)
        if os.path.isfile(p):
            return p
    return None


class CaptionLookup:
    """Caption of an image by its name relative to the root, its name relative to the caption file's
    folder, or its base name; counts names in the file that match no image."""

    def __init__(self, captions: dict[str, str], caption_file: str | None = None, root: str | None = None):
        self.captions = captions
        self.prefix = ""
        if caption_file and root:
            rel = os.path.relpath(os.path.dirname(os.path.abspath(caption_file)), root).replace(os.sep, "/")
            self.prefix = "" if rel == "." else rel + "/"
        self.used: set[str] = set()

    def get(self, name: str) -> str | None:
        for key in (name, name[len(self.prefix) :] if name.startswith(self.prefix) else None, os.path.basename(name)):
            if key is not None and key in self.captions:
                self.used.add(key)
                return self.captions[key]
        return None

    def unmatched(self, names) -> list[str]:
        """Caption-file entries naming none of ``names`` (images that do not exist)."""
        known = set()
        for n in names:
            known.update({n, os.path.basename(n)})
            if self.prefix and n.startswith(self.prefix):
                known.add(n[len(self.prefix) :])
        return sorted(k for k in self.captions if k not in known)
