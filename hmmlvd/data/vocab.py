"""Word vocabulary: a fixed list of token strings and their integer ids."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hmmlvd.core.atomic import atomic_write_text
from hmmlvd.core.errors import DataError

EOS = "<eos>"
UNK = "<unk>"


class Vocabulary:
    """Bijection between token strings and ids ``0 .. len-1``.

    Ids follow first appearance in the corpus the vocabulary was built from, so the same
    training file always yields the same ids.
    """

    def __init__(self, tokens: Sequence[str]):
        self.tokens: list[str] = list(tokens)
        self.index: dict[str, int] = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise DataError("vocabulary has duplicate tokens")
        if not self.tokens:
            raise DataError("vocabulary is empty")
        bad = next((t for t in self.tokens if not isinstance(t, str) or not t
                    or "\n" in t or "\r" in t), None)
        if bad is not None:
            raise DataError(f"vocabulary token {bad!r} is not a non-empty string without line "
                            "breaks")

    @classmethod
    def from_corpus(cls, tokens: Iterable[str]) -> Vocabulary:
        """Build from a token stream, ids in order of first appearance."""
        return cls(list(dict.fromkeys(tokens)))

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def encode(self, tokens: Sequence[str], source: str = "input") -> np.ndarray:
        """Map tokens to an int32 array [N]; unknown words become ``<unk>`` if the vocabulary
        has it, else raise :class:`DataError` naming the first unknown word."""
        unk = self.index.get(UNK)
        ids = np.empty(len(tokens), dtype=np.int32)
        for i, tok in enumerate(tokens):
            idx = self.index.get(tok, unk)
            if idx is None:
                raise DataError(f"{source}: word {tok!r} (position {i}) is not in the vocabulary "
                                f"and the vocabulary has no {UNK} token")
            ids[i] = idx
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids back to token strings."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise DataError(f"token id {i} is outside the vocabulary [0, {len(self.tokens)})")
            out.append(self.tokens[i])
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write one token per line (UTF-8), atomically."""
        atomic_write_text(path, "".join(tok + "\n" for tok in self.tokens))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file {path} does not exist")
        try:
            with open(path, encoding="utf-8", newline="\n") as f:
                return cls([line.removesuffix("\n") for line in f])
        except UnicodeDecodeError as exc:
            raise DataError(f"vocabulary file {path} is not valid UTF-8: {exc}") from exc
