"""Patch features and patch latents for image LVD.

An image [H, W, C] is cut into the row-major grid of square patches of ``hmmlvd.data.patches``;
a featuriser gives every patch i a vector that sees the patch and its surroundings, and
per-position k-means turns those vectors into a categorical latent Z_i with C values.

Featurisers (:class:`PatchFeaturiser`): :class:`PCAFeaturiser` (PCA of each patch plus
``context`` pixels around it) and ``hmmlvd.lvd.image.mae.MAEFeaturiser`` (a small masked
autoencoder); :func:`hmmlvd.lvd.image.featurisers.make_featuriser` builds either by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.core.validate import check_int
from hmmlvd.data.patches import patch_grid, windows_with_context
from hmmlvd.em.stop import check_stop
from hmmlvd.lvd.cluster import kmeans_per_position, nearest_centroids

__all__ = ["PCAFeaturiser", "PatchFeaturiser", "PatchLatents", "check_fitted_images",
           "check_images", "fit_patch_latents", "patch_latents", "patch_with_context"]

@runtime_checkable
class PatchFeaturiser(Protocol):
    """Learns patch features from training images and computes them for any images of the
    same size."""

    def fit(self, images: np.ndarray) -> PatchFeaturiser:
        """Learn from uint8 images [N, H, W, C]; returns self."""

    def transform(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, C] -> float32 features [N, num_patches, D]."""


def check_images(images: Any) -> np.ndarray:
    """``images`` as a non-empty uint8 array [N, H, W, C]; DataError otherwise."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"images must be a numpy array [N, H, W, C], got {type(images).__name__}")
    if images.ndim != 4:
        raise DataError(f"images must be [N, H, W, C], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 grey levels, got dtype {images.dtype}")
    if 0 in images.shape:
        raise DataError(f"images have an empty axis: shape {images.shape}")
    return images


def patch_with_context(images: np.ndarray, patch: int, context: int) -> np.ndarray:
    """Every patch with ``context`` pixels around it (zeros beyond the image border).

    Args:
        images: uint8 [N, H, W, C]; ``patch`` must divide H and W.
        patch: patch side p.
        context: extra pixels on each side, >= 0 (0 gives the patches themselves).

    Returns:
        float32 [N, num_patches, (p + 2 * context)^2 * C] in [0, 1]: patches row-major over the
        grid, each window's pixels row-major with channels innermost (as ``split_patches``).
    """
    images = check_images(images)
    context = check_int(context, "context", 0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return windows_with_context(x, patch, context).div_(255).numpy()


class PCAFeaturiser:
    """PCA of patch-plus-context windows, one basis shared by all patch positions.

    ``fit`` draws about ``fit_samples`` windows (all the windows of ceil(fit_samples /
    num_patches) random images, so every position is equally represented), centres them on
    their mean and keeps the top ``dim`` eigenvectors of their covariance (each signed so its
    largest-magnitude entry is positive). ``transform`` projects centred windows onto them.

    Attributes after ``fit``: ``mean`` float32 [S] and ``components`` float32 [dim, S]
    (orthonormal rows), S = (patch + 2 * context)^2 * C.
    """

    def __init__(self, patch: int, context: int = 4, dim: int = 32, seed: int = 0,
                 fit_samples: int = 20000) -> None:
        self.patch = check_int(patch, "patch", 1)
        self.context = check_int(context, "context", 0)
        self.dim = check_int(dim, "dim", 1)
        self.seed = check_int(seed, "seed", 0)
        self.fit_samples = check_int(fit_samples, "fit_samples", 1)
        self.image_shape: tuple[int, ...] | None = None
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def fit(self, images: np.ndarray) -> PCAFeaturiser:
        """Learn the mean and the top ``dim`` principal axes from uint8 images [N, H, W, C]."""
        images = check_images(images)
        n, h, w, c = images.shape
        rows, cols = patch_grid(h, w, self.patch)
        size = (self.patch + 2 * self.context) ** 2 * c
        if self.dim > size:
            raise DataError(f"PCA dim {self.dim} exceeds the {size} values of a patch with its "
                            f"context; use dim <= {size}")
        count = min(n, math.ceil(self.fit_samples / (rows * cols)))
        chosen = np.sort(np.random.default_rng(self.seed).choice(n, count, replace=False))
        x = torch.from_numpy(patch_with_context(images[chosen], self.patch, self.context))
        x = x.reshape(-1, size).double()
        mean = x.mean(0)
        x -= mean
        _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
        top = vectors[:, -self.dim:].flip(1).T  # [dim, S], largest variance first
        peak = top.abs().argmax(1, keepdim=True)
        top *= torch.sign(top.gather(1, peak))
        self.image_shape = (h, w, c)
        self.mean = mean.float().numpy()
        self.components = top.float().contiguous().numpy()
        return self

    def transform(self, images: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """uint8 images [N, H, W, C] (the fitted size) -> float32 features [N, num_patches,
        dim], computed ``chunk`` images at a time."""
        images = check_fitted_images(images, self.image_shape, "PCAFeaturiser")
        mean = torch.from_numpy(self.mean)
        components = torch.from_numpy(self.components)
        h, w, _ = self.image_shape
        rows, cols = patch_grid(h, w, self.patch)
        out = np.empty((len(images), rows * cols, self.dim), dtype=np.float32)
        for lo in range(0, len(images), chunk):
            check_stop("computing patch features")
            x = torch.from_numpy(patch_with_context(images[lo:lo + chunk], self.patch,
                                                    self.context))
            out[lo:lo + chunk] = ((x - mean) @ components.T).numpy()
        return out


def check_fitted_images(images: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """``images`` checked (see :func:`check_images`) and of ``shape`` (H, W, C), the size
    featuriser ``what`` was fitted on (None: not fitted, a ParameterError)."""
    if shape is None:
        raise ParameterError(f"{what} is not fitted: call fit(train_images) first")
    images = check_images(images)
    if images.shape[1:] != shape:
        raise DataError(f"{what} was fitted on images of shape {shape} (H, W, C), got "
                        f"{images.shape[1:]}")
    return images


@dataclass
class PatchLatents:
    """Patch latents from per-position k-means of patch features.

    ``labels``: int64 [N, num_patches], latent value of each training patch, in [0, C).
    ``centroids``: float32 [num_patches, C, D], the centroids of each position.
    """

    labels: np.ndarray
    centroids: np.ndarray

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Latents of new features [M, num_patches, D]: int64 [M, num_patches], the nearest
        centroid (squared L2) of each patch's position."""
        features = _check_features(features)
        positions, _, dim = self.centroids.shape
        if features.shape[1:] != (positions, dim):
            raise DataError(f"features must be [M, {positions}, {dim}] like the fitted ones, got "
                            f"shape {features.shape}")
        return np.stack([nearest_centroids(features[:, i], self.centroids[i])
                         for i in range(positions)], axis=1)


def _check_features(features: Any) -> np.ndarray:
    """``features`` as a non-empty finite real array [N, num_patches, D]."""
    if not isinstance(features, np.ndarray):
        raise DataError(f"features must be a numpy array [N, num_patches, D], got "
                        f"{type(features).__name__}")
    if features.ndim != 3:
        raise DataError(f"features must be [N, num_patches, D], got shape {features.shape}")
    if not (np.issubdtype(features.dtype, np.floating)
            or np.issubdtype(features.dtype, np.integer)):
        raise DataError(f"features must be real numbers, got dtype {features.dtype}")
    if 0 in features.shape:
        raise DataError(f"features have an empty axis: shape {features.shape}")
    if not np.isfinite(features).all():
        image, position = np.argwhere(~np.isfinite(features))[0][:2]
        raise DataError(f"features contain NaN or infinite values (first at image {image}, "
                        f"patch {position})")
    return features


def fit_patch_latents(features: np.ndarray, num_latents: int, seed: int = 0,
                      sample: int | None = None, progress: bool = True) -> PatchLatents:
    """K-means with ``num_latents`` clusters at each patch position.

    Args:
        features: [N, num_patches, D] (a featuriser's output).
        num_latents: C, values of each patch latent (<= N, or <= ``sample``).
        seed: seeds k-means; the same seed and features give the same latents.
        sample: train each position's centroids on this many random images (all N are
            assigned); None trains on all.
        progress: tqdm bar over positions.

    Returns:
        PatchLatents with labels int64 [N, num_patches] and centroids [num_patches, C, D].
    """
    features = _check_features(features)
    num_latents = check_int(num_latents, "num_latents", 1)
    result = kmeans_per_position(features, num_latents, sample=sample, seed=seed,
                                 progress=progress)
    return PatchLatents(labels=result.labels.astype(np.int64), centroids=result.centroids)


def patch_latents(features: np.ndarray, num_latents: int, seed: int = 0,
                  sample: int | None = None, progress: bool = True) -> np.ndarray:
    """Latents int64 [N, num_patches] in [0, num_latents) of patch features [N, num_patches,
    D]; see :func:`fit_patch_latents` (which also keeps the centroids, to label new images)."""
    return fit_patch_latents(features, num_latents, seed=seed, sample=sample,
                             progress=progress).labels
