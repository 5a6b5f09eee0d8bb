"""WikiText-2 (word level): three token streams and the vocabulary of train.

Convention (the usual word-LM one): each line is split on whitespace and followed by one
``<eos>``; a split is the concatenation of its lines into one stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmmlvd.core.errors import DataError
from hmmlvd.data.vocab import EOS, UNK, Vocabulary

SPLITS = ("train", "valid", "test")
HUB_NAME = ("Salesforce/wikitext", "wikitext-2-v1")


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Whitespace tokens of every line, each line closed by ``<eos>``."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


@dataclass
class WikiText:
    """A tokenised corpus: vocabulary (built from train) and one int32 id stream per split."""

    vocab: Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def split(self, name: str) -> np.ndarray:
        """The id stream [N] of split ``name`` (train, valid or test)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def _read_local(data_dir: Path) -> dict[str, list[str]]:
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    missing = [f"wiki.{s}.tokens" for s in SPLITS if not (data_dir / f"wiki.{s}.tokens").is_file()]
    if missing:
        raise DataError(f"data folder {data_dir} is missing {', '.join(missing)}; it must hold "
                        "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens")
    return {s: read_token_file(data_dir / f"wiki.{s}.tokens") for s in SPLITS}


def read_token_file(path: Path) -> list[str]:
    """The tokens of one UTF-8 text file (see :func:`tokenize_lines`); :class:`DataError`
    naming the file when it is not UTF-8: undecodable bytes, or NUL characters (UTF-16 text of
    ASCII words decodes as UTF-8 with a NUL after every letter). A UTF-8 byte order mark at the
    start (editors on Windows write one) is dropped: U+FEFF is not whitespace, so it would
    otherwise become part of the first word. OS errors (permission denied) pass through,
    naming the file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return tokenize_lines(_checked_lines(f, path))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {_first_bad_byte(path)}; convert it to "
                        "UTF-8, e.g. with iconv -t UTF-8") from exc


def _first_bad_byte(path: Path) -> str:
    """Where the first byte that is not UTF-8 lies in ``path`` (read again, only to say so)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bom = " (a UTF-16 byte order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        line = raw.count(b"\n", 0, exc.start) + 1
        return (f"byte {exc.start} (line {line}), "
                f"{raw[exc.start:exc.start + 1]!r}{bom}, {exc.reason}")
    return "it changed while being read"


def _checked_lines(lines: Iterable[str], path: Path) -> Iterator[str]:
    """``lines``, refusing a line with a NUL character (UTF-16 or binary data)."""
    for number, line in enumerate(lines, 1):
        if "\x00" in line:
            raise DataError(f"{path} is not UTF-8 text: line {number} holds NUL characters "
                            "(UTF-16 or binary data?); convert it to UTF-8, e.g. with iconv "
                            "-t UTF-8")
        yield line


def _read_hub() -> dict[str, list[str]]:
    try:
        import datasets

        ds = datasets.load_dataset(*HUB_NAME)
    except Exception as exc:  # offline, hub unreachable, package missing
        raise DataError(f"could not load {HUB_NAME[0]} ({HUB_NAME[1]}) from the datasets hub "
                        f"({type(exc).__name__}: {exc}); pass a local folder with --data-dir"
                        ) from exc
    hub_split = {"train": "train", "valid": "validation", "test": "test"}
    return {s: tokenize_lines(ds[hub_split[s]]["text"]) for s in SPLITS}


def load_wikitext(data_dir: str | os.PathLike | None = None,
                  vocab: Vocabulary | None = None) -> WikiText:
    """Load WikiText-2 from a local folder holding ``wiki.{train,valid,test}.tokens``, or from
    the ``datasets`` hub copy when ``data_dir`` is None.

    ``vocab``: use this vocabulary (e.g. a checkpoint's) instead of building one from train;
    words outside it map to ``<unk>``.
    """
    texts = _read_local(Path(data_dir)) if data_dir is not None else _read_hub()
    for s in SPLITS:
        if not any(tok != EOS for tok in texts[s]):
            raise DataError(f"split {s!r} of WikiText has no words")
    given = vocab is not None
    if vocab is None:
        vocab = Vocabulary.from_corpus(texts["train"])
    streams = {s: vocab.encode(texts[s], source=f"wiki.{s}.tokens") for s in SPLITS}
    unk, eos = vocab.index.get(UNK), vocab.index.get(EOS)
    train = streams["train"]
    words = train[train != eos] if eos is not None else train
    if unk is not None and len(words) and bool((words == unk).all()):  # nothing to learn from
        why = (": none of its words is in the given vocabulary (is this the data the model was "
               "trained on?)" if given else "")
        raise DataError(f"split 'train' of WikiText has only {UNK} words ({len(words)}){why}")
    return WikiText(vocab=vocab, **streams)
