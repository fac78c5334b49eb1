"""Language -> fonts registry: which font files may render a line of a given language.

AnyText2 draws a random font per line from a language -> fonts table (`rand_font`). The reference
keeps that table in a pickled ``.npy``; here it is a JSON/YAML file so it can be read safely and
reviewed. Fonts and character sets are cached per process because opening a FreeType face is the
single most repeated cost of rendering.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

BUNDLED_FONT_DIR = Path(__file__).resolve().parent.parent / "assets" / "fonts"
DEFAULT_FONT = "NotoSans-Regular.ttf"

# Bundled mapping (names relative to BUNDLED_FONT_DIR). The first font of a language is its default
# (used when rand_font is off).
BUNDLED_LANGUAGE_FONTS = {
    "Latin": ["NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "DejaVuSans.ttf"],
    "Chinese_sim": ["NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf"],
    "Chinese_tra": ["NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf"],
}

# Keys used by the reference's lang_font_dict, accepted so its table can be converted as is.
REFERENCE_LANGUAGE_KEYS = {
    "en": "Latin",
    "ch_sim_char": "Chinese_sim",
    "ch_tra_char": "Chinese_tra",
    "hi": "Hindi",
    "ar": "Arabic",
    "ja": "Japanese",
    "ko": "Korean",
    "bn": "Bangla",
}

MAPPING_FILE_NAMES = ("lang_fonts.yaml", "lang_fonts.yml", "lang_fonts.json")


class FontConfigError(ValueError):
    """A font mapping that cannot work: fail before training starts, naming the file."""


@lru_cache(maxsize=4096)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """Cached FreeType face (``font_variant`` in the reference re-opens the file every call)."""
    return ImageFont.truetype(path, size=int(size))


@lru_cache(maxsize=256)
def font_charset(path: str) -> frozenset:
    """Code points the font maps to a glyph (from its cmap)."""
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True, fontNumber=0) as tt:
        cmap = tt.getBestCmap() or {}
    return frozenset(cmap)


def missing_chars(path: str, text: str) -> str:
    """Characters of ``text`` the font cannot draw (whitespace always counts as drawable)."""
    cs = font_charset(path)
    return "".join(c for c in text if not c.isspace() and ord(c) not in cs)


@dataclass
class FontRegistry:
    """language -> list of font paths, plus the font for languages not in the table."""

    languages: dict = field(default_factory=dict)
    default_font: str = str(BUNDLED_FONT_DIR / DEFAULT_FONT)
    source: str = "<bundled>"

    def __post_init__(self):
        self.validate()

    @classmethod
    def bundled(cls) -> FontRegistry:
        langs = {k: [str(BUNDLED_FONT_DIR / f) for f in v] for k, v in BUNDLED_LANGUAGE_FONTS.items()}
        return cls(langs, str(BUNDLED_FONT_DIR / DEFAULT_FONT), "<bundled>")

    @classmethod
    def from_path(cls, path: str | os.PathLike | None) -> FontRegistry:
        """A mapping file (JSON/YAML) or a folder holding ``lang_fonts.{yaml,json}``; None = bundled.

        File format::

            default: NotoSans-Regular.ttf        # optional
            languages:
              Latin: [NotoSans-Regular.ttf, more/OtherFont.ttf]
              Chinese_sim: [...]

        Relative font paths are resolved against the mapping file's folder. The reference's key
        names (``en``, ``ch_sim_char`` ...) and its ``{"fonts": [...]}`` values are accepted too.
        """
        if path is None:
            return cls.bundled()
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in MAPPING_FILE_NAMES if (path / n).is_file()]
            if not found:
                raise FontConfigError(f"font folder {path} has no mapping file ({', '.join(MAPPING_FILE_NAMES)})")
            path = found[0]
        if not path.is_file():
            raise FontConfigError(f"font mapping file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as e:
            raise FontConfigError(f"font mapping file {path} is not readable JSON/YAML: {e}") from e
        if not isinstance(raw, dict):
            raise FontConfigError(f"font mapping file {path}: expected a mapping at the top level")
        langs_raw = raw.get("languages", {k: v for k, v in raw.items() if k != "default"})
        base = path.parent

        def resolve(p: str) -> str:
            q = Path(p)
            if not q.is_absolute():
                q = base / q
            if not q.exists() and (BUNDLED_FONT_DIR / p).exists():
                q = BUNDLED_FONT_DIR / p
            return str(q)

        langs = {}
        for key, value in langs_raw.items():
            if isinstance(value, dict):
                value = value.get("fonts", [])
            if isinstance(value, str):
                value = [value]
            langs[REFERENCE_LANGUAGE_KEYS.get(key, key)] = [resolve(v) for v in value]
        default = resolve(raw["default"]) if raw.get("default") else str(BUNDLED_FONT_DIR / DEFAULT_FONT)
        return cls(langs, default, str(path))

    def validate(self) -> None:
        """Every listed font must open; every language needs at least one font."""
        for lang, fonts in list(self.languages.items()) + [("<default>", [self.default_font])]:
            if not fonts:
                raise FontConfigError(f"font mapping {self.source}: language {lang!r} has no usable font")
            for f in fonts:
                try:
                    load_font(f, 20)
                    font_charset(f)
                except Exception as e:
                    raise FontConfigError(
                        f"font mapping {self.source}: language {lang!r}: font {f} cannot be loaded ({e})"
                    ) from e

    def fonts_for(self, language: str) -> tuple[list, bool]:
        """(candidate fonts, whether the language is known); unknown -> [default_font]."""
        fonts = self.languages.get(language)
        if fonts:
            return fonts, True
        return [self.default_font], False

    def all_fonts(self) -> Iterable[str]:
        seen = dict.fromkeys([f for v in self.languages.values() for f in v] + [self.default_font])
        return list(seen)
