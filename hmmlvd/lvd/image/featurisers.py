"""Featurisers by name: :func:`make_featuriser` builds the PCA featuriser
(:mod:`hmmlvd.lvd.image.features`) or the masked autoencoder (:mod:`hmmlvd.lvd.image.mae`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hmmlvd.core.errors import ParameterError
from hmmlvd.lvd.image.features import PatchFeaturiser, PCAFeaturiser
from hmmlvd.lvd.image.mae import MAEFeaturiser

#: Names :func:`make_featuriser` knows.
FEATURISERS = ("mae", "pca")


def make_featuriser(name: str, patch: int, *, context: int = 4, dim: int = 32, seed: int = 0,
                    cache_dir: str | Path | None = None, progress: bool = True,
                    **options: Any) -> PatchFeaturiser:
    """The featuriser called ``name`` ("pca" or "mae"), not yet fitted.

    ``options`` are further settings of that featuriser's class (PCA: ``fit_samples``; MAE:
    ``epochs``, ``mask_ratio``, ``batch_size``, ``fit_images``, ``lr``, ``device``).
    ``cache_dir`` and ``progress`` apply to the MAE only (PCA needs no cache and is quick).
    """
    if name == "pca":
        cls: type = PCAFeaturiser
        common = {"context": context, "dim": dim, "seed": seed}
    elif name == "mae":
        cls = MAEFeaturiser
        common = {"context": context, "dim": dim, "seed": seed, "cache_dir": cache_dir,
                  "progress": progress}
    else:
        raise ParameterError(f"unknown featuriser {name!r}; choose one of {list(FEATURISERS)}")
    allowed = set(inspect.signature(cls).parameters) - set(common) - {"patch"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ParameterError(f"featuriser {name!r} has no option(s) {unknown}; its options are "
                             f"{sorted(allowed)}")
    return cls(patch, **common, **options)
