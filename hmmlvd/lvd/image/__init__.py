"""LVD for images: patch featurisers (PCA, a small masked autoencoder: ``features``, ``mae``),
k-means patch latents, and ``distil_patches`` (``distill``): features -> latents -> the
:class:`~hmmlvd.image.PatchCircuit` they imply, with its initial parameters (its EM stages are
the model's verbs, run by :mod:`hmmlvd.pipelines.image_lvd`)."""

from hmmlvd.lvd.image.distill import PatchDistillation, PatchLVDConfig, distil_patches
from hmmlvd.lvd.image.features import (
    PatchFeaturiser,
    PatchLatents,
    PCAFeaturiser,
    fit_patch_latents,
    patch_latents,
    patch_with_context,
)
from hmmlvd.lvd.image.featurisers import FEATURISERS, make_featuriser
from hmmlvd.lvd.image.mae import MAEFeaturiser

__all__ = ["FEATURISERS", "MAEFeaturiser", "PCAFeaturiser", "PatchDistillation",
           "PatchFeaturiser", "PatchLVDConfig", "PatchLatents", "distil_patches",
           "fit_patch_latents", "make_featuriser", "patch_latents", "patch_with_context"]
