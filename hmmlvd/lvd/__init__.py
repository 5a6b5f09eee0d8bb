"""Latent variable distillation: text encoders, suffix embeddings (cached on disk), k-means
labels per position, the distillation pipeline; for images, patch features and latents and the
patch-LVD training pipeline (``image``)."""

from hmmlvd.errors import EncoderError
from hmmlvd.lvd.cluster import KMeansResult, kmeans_labels, kmeans_per_position
from hmmlvd.lvd.distill import LVDResult, LVDSettings, distill, embed, lvd_subset, run_lvd
from hmmlvd.lvd.encoder import Encoder, load_encoder, word_to_text
from hmmlvd.lvd.image import PatchLVDConfig, train_patch_lvd
from hmmlvd.lvd.patch_features import (
    FEATURISERS,
    PatchFeaturiser,
    PatchLatents,
    PCAFeaturiser,
    fit_patch_latents,
    make_featuriser,
    patch_latents,
    patch_with_context,
)
from hmmlvd.lvd.patch_mae import MAEFeaturiser
from hmmlvd.lvd.suffix import SUFFIX_MODES, embed_windows, suffix_embeddings

__all__ = [
    "FEATURISERS",
    "SUFFIX_MODES",
    "Encoder",
    "EncoderError",
    "KMeansResult",
    "LVDResult",
    "LVDSettings",
    "MAEFeaturiser",
    "PCAFeaturiser",
    "PatchFeaturiser",
    "PatchLVDConfig",
    "PatchLatents",
    "distill",
    "embed",
    "embed_windows",
    "fit_patch_latents",
    "kmeans_labels",
    "kmeans_per_position",
    "load_encoder",
    "lvd_subset",
    "make_featuriser",
    "patch_latents",
    "patch_with_context",
    "run_lvd",
    "suffix_embeddings",
    "train_patch_lvd",
    "word_to_text",
]
