"""A tiny randomly initialised BERT with a hand-written WordPiece vocabulary, saved as a Hugging
Face model folder, for LVD tests that must not download anything. Import it from test files:
``from lvd_tiny import TINY_WORDS, build_tiny_bert``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from hmmlvd.data import Vocabulary

WORDPIECES = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
              "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red", "-", ",", ".",
              "play", "##ing", "##ed", "un", "##believ", "##able", "x", "##x"]

# Corpus words (WikiText conventions), ids 0.. in this order. Piece counts with the vocabulary
# above: most 1; playing 2, played 2, unbelievable 3, xxxxxx 6 (capped at 4); zebra -> [UNK].
TINY_WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red", "playing",
              "played", "unbelievable", "xxxxxx", "zebra", "@-@", "@,@", "@.@", "<unk>", "<eos>"]


def tiny_vocab() -> Vocabulary:
    """The corpus vocabulary of :data:`TINY_WORDS`."""
    return Vocabulary(TINY_WORDS)


def build_tiny_bert(folder: Path, seed: int = 0, max_positions: int = 256) -> Path:
    """Write a random 2-layer BERT (hidden 32) and its fast tokenizer to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the WordPiece vocabulary as ``vocab`` (``vocab_file`` is ignored).
    tokenizer = BertTokenizerFast(vocab={p: i for i, p in enumerate(WORDPIECES)})
    config = BertConfig(vocab_size=len(WORDPIECES), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=max_positions, initializer_range=0.2)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_wikitext(folder: Path, lines: tuple[int, int, int], words_per_line: int,
                        seed: int = 0) -> Path:
    """A WikiText-style folder (train, valid, test with the given line counts) of random lines
    over the corpus words of :data:`TINY_WORDS` (no ``<eos>``/``<unk>`` typed in)."""
    rng = np.random.default_rng(seed)
    words = [w for w in TINY_WORDS if w not in ("<eos>", "<unk>")]
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines, strict=True):
        text = "".join(" ".join(rng.choice(words, size=words_per_line)) + "\n"
                       for _ in range(count))
        (folder / f"wiki.{split}.tokens").write_text(text)
    return folder
