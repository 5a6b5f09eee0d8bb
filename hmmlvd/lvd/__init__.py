"""Latent variable distillation: text encoders, suffix embeddings (cached on disk), k-means
labels per position, and the distillation pipeline."""

from hmmlvd.errors import EncoderError
from hmmlvd.lvd.cluster import KMeansResult, kmeans_labels, kmeans_per_position
from hmmlvd.lvd.distill import LVDResult, LVDSettings, distill, embed, run_lvd
from hmmlvd.lvd.encoder import Encoder, load_encoder, word_to_text
from hmmlvd.lvd.suffix import SUFFIX_MODES, embed_windows, suffix_embeddings

__all__ = [
    "SUFFIX_MODES",
    "Encoder",
    "EncoderError",
    "KMeansResult",
    "LVDResult",
    "LVDSettings",
    "distill",
    "embed",
    "embed_windows",
    "kmeans_labels",
    "kmeans_per_position",
    "load_encoder",
    "run_lvd",
    "suffix_embeddings",
    "word_to_text",
]
