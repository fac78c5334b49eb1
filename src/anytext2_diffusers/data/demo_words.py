"""Word pools of the demo model: open-ended training words and a fixed held-out set.

The built-in synth lists (20 Latin, 21 Chinese words) let a model memorise whole words; to measure
whether it *writes* (renders glyphs it was never shown as a whole word) the demo trains on random
letter strings and common-character pairs and scores 50 real words it never saw.
"""

from __future__ import annotations

import numpy as np

# Common simplified characters (all covered by both bundled CJK font subsets).
COMMON_HANZI = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么"
    "心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分"
    "将外但身些与高意进把法此实回二理美点月明神间山水火木金土口目田米石花草风雨云电车马鸟鱼书店门市路东西南北"
)
# Held out of every training set: 40 Latin words of 3-8 letters and 10 two-character Chinese words.
HELDOUT_LATIN = (
    "CAFE", "river", "Piano", "LAMP", "candle", "forest", "Rocket", "MARKET", "violet", "Window",
    "PARK", "lemon", "Harbor", "DANCE", "silver", "Castle", "ORANGE", "pencil", "Tiger", "BRIDGE",
    "Moon", "table", "Planet", "QUIET", "sunset", "Island", "TRAIN", "winter", "Pepper", "GOLD",
    "cloud", "Dragon", "STREET", "rabbit", "Letter", "OCEAN", "jacket", "Mirror", "SPRING", "tower",
)  # fmt: skip
HELDOUT_CHINESE = ("山水", "花草", "风雨", "电车", "书店", "米石", "金土", "南北", "日月", "马鸟")
HELDOUT_WORDS = HELDOUT_LATIN + HELDOUT_CHINESE

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_latin_words(rng: np.random.Generator, n: int, min_len: int = 3, max_len: int = 8) -> list[str]:
    """``n`` random letter strings (lower, UPPER or Capitalised), none of them a held-out word."""
    held = {w.lower() for w in HELDOUT_LATIN}
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(list(_LETTERS), int(rng.integers(min_len, max_len + 1))))
        if word in held:
            continue
        case = rng.random()
        out.append(word.upper() if case < 0.35 else word.capitalize() if case < 0.7 else word)
    return out


def random_chinese_words(rng: np.random.Generator, n: int, min_len: int = 2, max_len: int = 3) -> list[str]:
    """``n`` random strings of common characters, none of them a held-out word."""
    held = set(HELDOUT_CHINESE)
    chars = list(COMMON_HANZI)
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(chars, int(rng.integers(min_len, max_len + 1))))
        if word not in held:
            out.append(word)
    return out


def training_pools(seed: int, n_latin: int = 20000, n_chinese: int = 5000) -> tuple:
    """(latin, chinese, traditional) pools for ``synth.make_demo_data(pools=...)``; no traditional words."""
    rng = np.random.default_rng(seed)
    return random_latin_words(rng, n_latin), random_chinese_words(rng, n_chinese), ()


def make_word_data(
    out_dir: str, n: int, seed: int, resolution: int, heldout: bool = False, style: str = "varied"
) -> str:
    """The demo model's synthetic AnyWord data (its recipe's data stages, and ``--demo``): 1-3 lines per image
    drawn from ``training_pools(seed)``; ``heldout``: 1-2 lines of the held-out words. ``style``: the
    generator's (``synth.STYLES``; the focus stage and ``--demo`` draw "clean"). Returns the JSON path."""
    from .synth import make_demo_data

    if heldout:
        pools, lines = (HELDOUT_LATIN, HELDOUT_CHINESE, ()), (1, 2)
    else:
        pools, lines = training_pools(seed), (1, 3)
    return make_demo_data(out_dir, n, seed, resolution, lines_per_image=lines, pools=pools, style=style)
