"""LVD for images: patch featurisers (PCA, a small masked autoencoder: ``features``, ``mae``),
k-means patch latents, and ``train_patch_lvd`` (``train``): latents -> per-patch circuits ->
a :class:`~hmmlvd.image.PatchCircuit` finetuned by EM."""

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
from hmmlvd.lvd.image.train import PatchLVDConfig, train_patch_lvd

__all__ = ["FEATURISERS", "MAEFeaturiser", "PCAFeaturiser", "PatchFeaturiser", "PatchLVDConfig",
           "PatchLatents", "fit_patch_latents", "make_featuriser", "patch_latents",
           "patch_with_context", "train_patch_lvd"]
