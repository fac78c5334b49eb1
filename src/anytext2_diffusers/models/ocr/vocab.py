"""Character tables and text -> CTC label ids, with AnyText2's conventions.

The class table is ``['sos'] + dictionary + [' ']``: index 0 is the CTC blank, the appended space is
also where characters missing from the dictionary go (AnyText2's ``char2id.get(c, len - 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch

BLANK_INDEX = 0
_DICT_RESOURCE = ("anytext2_diffusers", "assets/ocr/ppocr_keys_v1.txt")


def read_dictionary(path: str | Path) -> list[str]:
    """One character per line (PaddleOCR ``*_dict.txt`` / ``ppocr_keys_v1.txt`` format)."""
    try:
        raw = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"OCR character dictionary not found: {path}") from None
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line.removesuffix("\r") for line in lines]


def build_character_list(dictionary: Sequence[str]) -> list[str]:
    """AnyText2's class table: blank ('sos') first, the dictionary, then ' ' (also the unknown class)."""
    return ["sos", *dictionary, " "]


def load_character_list(path: str | Path | None = None) -> list[str]:
    """The PP-OCR Chinese+Latin class table (6625 entries) from ``path`` or the copy shipped with the package."""
    if path is None:
        ref = resources.files(_DICT_RESOURCE[0]).joinpath(_DICT_RESOURCE[1])
        with resources.as_file(ref) as p:
            return build_character_list(read_dictionary(p))
    return build_character_list(read_dictionary(path))


def char_to_id(characters: Sequence[str]) -> dict[str, int]:
    # A dict comprehension keeps the last index of a duplicated entry, as the reference does.
    return {c: i for i, c in enumerate(characters)}


def text_to_ids(text: str, characters: Sequence[str], mapping: dict[str, int] | None = None) -> list[int]:
    """Per-character ids; unknown characters map to the last class (the appended space)."""
    mapping = mapping if mapping is not None else char_to_id(characters)
    unknown = len(characters) - 1
    return [mapping.get(c, unknown) for c in text]


def texts_to_labels(texts: Sequence[str], characters: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated targets and lengths (the layout ``torch.nn.functional.ctc_loss`` takes)."""
    mapping = char_to_id(characters)
    ids: list[int] = []
    lengths: list[int] = []
    for t in texts:
        line = text_to_ids(t, characters, mapping)
        ids += line
        lengths.append(len(line))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)
