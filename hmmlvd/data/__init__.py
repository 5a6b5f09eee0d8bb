"""Data: vocabularies, WikiText-2 token streams, and strided windows over streams."""

from hmmlvd.data.vocab import EOS, UNK, Vocabulary
from hmmlvd.data.wikitext import WikiText, load_wikitext, tokenize_lines
from hmmlvd.data.windows import TokenWindows

__all__ = ["EOS", "UNK", "TokenWindows", "Vocabulary", "WikiText", "load_wikitext",
           "tokenize_lines"]
