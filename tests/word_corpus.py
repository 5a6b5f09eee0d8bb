"""A tiny WikiText-style corpus of random lines over 11 words, for CLI and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park"]


def write_word_corpus(folder: Path, words: list[str] = WORDS) -> Path:
    """``folder``/wiki.{train,valid,test}.tokens with 60 / 10 / 10 random lines of 3-8
    ``words``; returns it."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, lines in (("train", 60), ("valid", 10), ("test", 10)):
        text = "".join(" ".join(rng.choice(words, size=rng.integers(3, 9))) + "\n"
                       for _ in range(lines))
        (folder / f"wiki.{split}.tokens").write_text(text)
    return folder
