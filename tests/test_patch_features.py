"""Patch features for image LVD (hmmlvd.lvd.image.features): context windows against a
per-patch loop, PCA against NumPy's SVD, patch latents recovering planted prototypes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.data.patches import split_patches
from hmmlvd.lvd.image.features import (
    PatchFeaturiser,
    PCAFeaturiser,
    fit_patch_latents,
    patch_latents,
    patch_with_context,
)
from hmmlvd.lvd.image.featurisers import make_featuriser


def random_images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w", "c", "p", "ctx"), [(4, 6, 1, 2, 1), (8, 8, 3, 4, 2),
                                                       (6, 6, 3, 3, 0), (4, 4, 1, 2, 3),
                                                       (5, 5, 2, 5, 1)])
def test_patch_with_context_matches_loop(h, w, c, p, ctx):
    images = random_images(3, h, w, c)
    got = patch_with_context(images, p, ctx)
    side = p + 2 * ctx
    assert got.dtype == np.float32 and got.shape == (3, (h // p) * (w // p), side * side * c)
    for n in range(3):
        for i in range(h // p):
            for j in range(w // p):
                window = np.zeros((side, side, c))
                for a in range(side):
                    for b in range(side):
                        r, s = i * p - ctx + a, j * p - ctx + b
                        if 0 <= r < h and 0 <= s < w:
                            window[a, b] = images[n, r, s] / 255
                np.testing.assert_allclose(got[n, i * (w // p) + j], window.ravel(), rtol=1e-6)


def test_zero_context_is_split_patches():
    images = random_images(2, 8, 12, 3)
    np.testing.assert_allclose(patch_with_context(images, 4, 0), split_patches(images, 4) / 255,
                               rtol=1e-6)


def test_pca_full_rank_reconstructs_and_matches_svd():
    images = random_images(40, 8, 8, 1, seed=1)
    windows = patch_with_context(images, 4, 1).reshape(-1, 36).astype(np.float64)
    pca = PCAFeaturiser(4, context=1, dim=36, fit_samples=10**6).fit(images)
    features = pca.transform(images, chunk=7)
    assert features.shape == (40, 4, 36) and features.dtype == np.float32
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(36), atol=1e-5)
    back = features.reshape(-1, 36) @ pca.components + pca.mean
    np.testing.assert_allclose(back, windows, atol=1e-4)
    centred = windows - windows.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for k in range(3):  # top components equal NumPy's up to sign
        sign = np.sign(vt[k] @ pca.components[k])
        np.testing.assert_allclose(pca.components[k], sign * vt[k], atol=1e-4)
        np.testing.assert_allclose(features.reshape(-1, 36)[:, k], sign * centred @ vt[k],
                                   atol=1e-4)


def test_pca_is_seeded_and_low_dim():
    images = random_images(50, 12, 12, 3, seed=2)
    a = PCAFeaturiser(6, context=2, dim=5, seed=3, fit_samples=40).fit(images).transform(images)
    b = PCAFeaturiser(6, context=2, dim=5, seed=3, fit_samples=40).fit(images).transform(images)
    assert a.shape == (50, 4, 5)
    np.testing.assert_array_equal(a, b)


def prototype_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 images of 4x4 patches; patch i of image m is prototype truth[m, i] (0 or 1) of
    position i plus small noise. Prototypes differ per position (pixels near 30 vs near 220)."""
    protos = np.random.default_rng(0).integers(0, 30, (16, 2, 4, 4))
    protos[:, 1] += 190
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, (n, 16))
    patches = protos[np.arange(16), truth] + rng.integers(0, 6, (n, 16, 4, 4))
    images = patches.reshape(n, 4, 4, 4, 4).transpose(0, 1, 3, 2, 4).reshape(n, 16, 16, 1)
    return images.astype(np.uint8), truth


def test_patch_latents_recover_prototypes():
    images, truth = prototype_images(200, seed=1)
    pca = PCAFeaturiser(4, context=0, dim=6).fit(images)
    features = pca.transform(images)
    latents = fit_patch_latents(features, 2, seed=0, progress=False)
    assert latents.labels.dtype == np.int64 and latents.labels.shape == (200, 16)
    assert latents.centroids.shape == (16, 2, 6)
    for i in range(16):  # the same partition, up to swapping the two labels
        same = latents.labels[:, i] == truth[:, i]
        assert same.all() or (~same).all(), f"position {i}"
    np.testing.assert_array_equal(latents.assign(features), latents.labels)
    np.testing.assert_array_equal(patch_latents(features, 2, seed=0, progress=False),
                                  latents.labels)
    new, new_truth = prototype_images(30, seed=2)  # new images get the same label mapping
    flip = latents.labels[0] != truth[0]
    np.testing.assert_array_equal(latents.assign(pca.transform(new)), new_truth ^ flip)


def test_make_featuriser():
    pca = make_featuriser("pca", 7, context=2, dim=3, fit_samples=100)
    assert isinstance(pca, PCAFeaturiser) and isinstance(pca, PatchFeaturiser)
    assert (pca.patch, pca.context, pca.dim, pca.fit_samples) == (7, 2, 3, 100)
    with pytest.raises(ParameterError, match=r"unknown featuriser 'vae'.*'mae', 'pca'"):
        make_featuriser("vae", 7)
    with pytest.raises(ParameterError, match=r"no option\(s\) \['epochs'\].*fit_samples"):
        make_featuriser("pca", 7, epochs=3)


def test_errors():
    good = random_images(4, 8, 8, 1)
    pca = PCAFeaturiser(4, dim=2)
    with pytest.raises(ParameterError, match="not fitted"):
        pca.transform(good)
    with pytest.raises(DataError, match="uint8"):
        pca.fit(good.astype(np.float32))
    with pytest.raises(DataError, match=r"\[N, H, W, C\]"):
        pca.fit(good[..., 0])
    with pytest.raises(DataError, match="numpy array"):
        pca.fit(good.tolist())
    with pytest.raises(DataError, match="empty axis"):
        pca.fit(good[:0])
    with pytest.raises(DataError, match="does not divide"):
        PCAFeaturiser(3).fit(good)
    with pytest.raises(DataError, match="exceeds the 16 values"):
        PCAFeaturiser(4, context=0, dim=17).fit(good)
    with pytest.raises(DataError, match="context must be >= 0"):
        patch_with_context(good, 4, -1)
    with pytest.raises(DataError, match="dim must be >= 1"):
        PCAFeaturiser(4, dim=0)
    pca.fit(good)
    with pytest.raises(DataError, match=r"fitted on images of shape \(8, 8, 1\)"):
        pca.transform(random_images(2, 8, 8, 3))
    features = pca.transform(good)
    features[2, 1, 0] = np.nan
    with pytest.raises(DataError, match=r"NaN or infinite.*image 2, patch 1"):
        patch_latents(features, 2, progress=False)
    with pytest.raises(DataError, match=r"\[N, num_patches, D\]"):
        patch_latents(features[0], 2, progress=False)
    with pytest.raises(DataError, match="num_latents must be >= 1"):
        patch_latents(pca.transform(good), 0, progress=False)
    latents = fit_patch_latents(pca.transform(good), 2, progress=False)
    with pytest.raises(DataError, match=r"\[M, 4, 2\]"):
        latents.assign(np.zeros((3, 5, 2), dtype=np.float32))
