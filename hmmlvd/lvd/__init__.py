"""Latent variable distillation: encode -> cluster -> labels -> closed-form init (no EM: EM is
the trainers' job).

- :mod:`hmmlvd.lvd.cluster`: k-means labels (FAISS), shared by text and images.
- :mod:`hmmlvd.lvd.text`: the encoder, suffix embeddings (cached on disk) and the text
  distillation pipeline (``distill``, ``run_lvd``, ``lvd_subset``) that ends in an HMM's MLE.
- :mod:`hmmlvd.lvd.image`: patch featurisers (PCA, a small MAE), patch latents and
  ``distil_patches``, which ends in a :class:`~hmmlvd.image.PatchCircuit` and the latent
  label of every patch.

The names below are loaded on first use (PEP 562), so ``import hmmlvd.lvd`` for images does not
import ``transformers``: only the text names do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hmmlvd.core.errors import EncoderError
from hmmlvd.lvd.cluster import KMeansResult, kmeans_labels, kmeans_per_position

_TEXT = ("LVDResult", "LVDSettings", "distill", "embed", "lvd_subset", "run_lvd", "Encoder",
         "load_encoder", "word_to_text", "SUFFIX_MODES", "embed_windows", "suffix_embeddings")
_IMAGE = ("PatchLVDConfig", "PatchDistillation", "distil_patches", "FEATURISERS",
          "PatchFeaturiser", "PatchLatents", "PCAFeaturiser", "fit_patch_latents",
          "make_featuriser", "patch_latents", "patch_with_context", "MAEFeaturiser")
_LAZY = {**dict.fromkeys(_TEXT, "hmmlvd.lvd.text"), **dict.fromkeys(_IMAGE, "hmmlvd.lvd.image")}

if TYPE_CHECKING:
    from hmmlvd.lvd.image import (
        FEATURISERS,
        MAEFeaturiser,
        PatchDistillation,
        PatchFeaturiser,
        PatchLatents,
        PatchLVDConfig,
        PCAFeaturiser,
        distil_patches,
        fit_patch_latents,
        make_featuriser,
        patch_latents,
        patch_with_context,
    )
    from hmmlvd.lvd.text import (
        SUFFIX_MODES,
        Encoder,
        LVDResult,
        LVDSettings,
        distill,
        embed,
        embed_windows,
        load_encoder,
        lvd_subset,
        run_lvd,
        suffix_embeddings,
        word_to_text,
    )


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hmmlvd.lvd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


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
    "PatchDistillation",
    "PatchFeaturiser",
    "PatchLVDConfig",
    "PatchLatents",
    "distil_patches",
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
    "word_to_text",
]
