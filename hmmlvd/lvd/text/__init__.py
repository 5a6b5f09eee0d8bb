"""LVD for text: a BERT-like encoder (``encoder``), suffix embeddings of every window position,
cached on disk (``suffix``), and the pipeline embed -> k-means per position -> labels -> the
HMM's closed-form MLE (``distill``). Importing this package imports ``transformers``."""

from hmmlvd.lvd.text.distill import LVDResult, LVDSettings, distill, embed, lvd_subset, run_lvd
from hmmlvd.lvd.text.encoder import Encoder, load_encoder, word_to_text
from hmmlvd.lvd.text.suffix import SUFFIX_MODES, embed_windows, suffix_embeddings

__all__ = ["SUFFIX_MODES", "Encoder", "LVDResult", "LVDSettings", "distill", "embed",
           "embed_windows", "load_encoder", "lvd_subset", "run_lvd", "suffix_embeddings",
           "word_to_text"]
