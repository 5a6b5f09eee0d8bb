"""LVD clustering: per-position FAISS k-means labels, checked against known blob assignments
and a brute-force nearest-centroid oracle in NumPy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.lvd.cluster import (
    KMeansResult,
    faiss_gpu_available,
    kmeans_labels,
    kmeans_per_position,
    nearest_centroids,
)


def blobs(n: int, length: int, dim: int, k: int, seed: int = 0, sep: float = 20.0,
          noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: embeddings float32 [n, length, dim] and the true cluster
    int64 [n, length]. Each position has its own centres and its own balanced random
    assignment, so a position mix-up or a label copied across positions breaks recovery."""
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.permutation(np.arange(n) % k) for _ in range(length)], axis=1)
    centres = sep * rng.standard_normal((length, k, dim))
    emb = centres[np.arange(length)[None, :], truth] + noise * rng.standard_normal(
        (n, length, dim))
    return emb.astype(np.float32), truth


def contingency(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Counts [k, k] of (a == i, b == j) over rows."""
    table = np.zeros((k, k), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def assert_same_partition(labels: np.ndarray, truth: np.ndarray, k: int) -> None:
    """Per position, labels equal truth up to a permutation of cluster ids: the contingency
    table has exactly one non-zero entry in every row and every column."""
    for t in range(truth.shape[1]):
        nonzero = contingency(truth[:, t], labels[:, t], k) > 0
        assert (nonzero.sum(0) == 1).all() and (nonzero.sum(1) == 1).all(), f"position {t}"


def brute_distances(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared L2 distances [N, T, k] in float64 from every row to every centroid."""
    x = emb.astype(np.float64)
    c = centroids.astype(np.float64)
    return ((x[:, :, None, :] - c[None, :, :, :]) ** 2).sum(-1)


# ----- recovery ---------------------------------------------------------------------------

def test_blob_setup_differs_between_positions():
    _, truth = blobs(300, 3, 8, 5, seed=1)
    for t in range(1, 3):
        assert (contingency(truth[:, 0], truth[:, t], 5) > 0).sum() > 5


def test_blobs_recovered_per_position_kmeanspp():
    emb, truth = blobs(400, 4, 16, 5, seed=1)
    labels = kmeans_labels(emb, 5, init="kmeans++", progress=False)
    assert_same_partition(labels, truth, 5)


def test_two_blobs_recovered_with_default_random_init():
    # With k = 2 and balanced, well-separated blobs Lloyd recovers the split from any start.
    emb, truth = blobs(300, 3, 8, 2, seed=2)
    for seed in range(3):
        assert_same_partition(kmeans_labels(emb, 2, seed=seed, progress=False), truth, 2)


def test_blobs_recovered_from_a_sample():
    emb, truth = blobs(1000, 3, 8, 4, seed=3)
    labels = kmeans_labels(emb, 4, sample=120, init="kmeans++", batch_size=256, progress=False)
    assert_same_partition(labels, truth, 4)


# ----- shapes and the nearest-centroid property ----------------------------------------------

def test_labels_shape_dtype_range_and_result_fields():
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((300, 3, 6)).astype(np.float32)
    res = kmeans_per_position(emb, 7, niter=5, progress=False)
    assert isinstance(res, KMeansResult)
    assert res.labels.shape == (300, 3) and res.labels.dtype == np.int32
    assert res.labels.min() >= 0 and res.labels.max() < 7
    assert res.centroids.shape == (3, 7, 6) and res.centroids.dtype == np.float32
    d2 = brute_distances(emb, res.centroids)
    assigned = np.take_along_axis(d2, res.labels[:, :, None].astype(np.int64), 2)[..., 0]
    np.testing.assert_allclose(res.inertia, assigned.sum(0), rtol=1e-4)
    np.testing.assert_array_equal(kmeans_labels(emb, 7, niter=5, progress=False), res.labels)


def test_sample_still_labels_every_row_with_its_nearest_centroid():
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((2000, 3, 5)).astype(np.float32)
    res = kmeans_per_position(emb, 6, sample=150, batch_size=333, progress=False)
    assert res.labels.shape == (2000, 3)
    d2 = brute_distances(emb, res.centroids)
    assigned = np.take_along_axis(d2, res.labels[:, :, None].astype(np.int64), 2)[..., 0]
    # Equal up to float32 rounding (a near-tie may go either way).
    np.testing.assert_allclose(assigned, d2.min(-1), rtol=1e-5, atol=1e-5)
    assert (res.labels == d2.argmin(-1)).mean() > 0.999


def test_sample_of_exactly_k_rows_makes_those_rows_the_centroids():
    # FAISS copies the training points when there are exactly k: every centroid must then be
    # one of that position's embeddings (the sample reads rows of the right position).
    rng = np.random.default_rng(6)
    emb = rng.standard_normal((500, 3, 4)).astype(np.float32)
    res = kmeans_per_position(emb, 5, sample=5, progress=False)
    picked = []
    for t in range(3):
        match = (res.centroids[t][:, None, :] == emb[None, :, t, :]).all(-1)  # [k, N]
        assert (match.sum(1) >= 1).all(), f"position {t}"
        rows = match.argmax(1)
        np.testing.assert_array_equal(res.labels[rows, t], np.arange(5))
        picked.append(sorted(rows.tolist()))
    assert picked[0] != picked[1] or picked[1] != picked[2]
    other = kmeans_per_position(emb, 5, sample=5, seed=1, progress=False)
    assert not np.array_equal(other.centroids, res.centroids)


# ----- inputs --------------------------------------------------------------------------------

def test_float16_memmap_on_disk(tmp_path):
    emb, truth = blobs(600, 3, 8, 3, seed=7)
    path = tmp_path / "emb.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=emb.shape)
    mm[:] = emb
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.float16, mode="r", shape=emb.shape)
    for sample in (None, 200):
        labels = kmeans_labels(ro, 3, sample=sample, init="kmeans++", batch_size=128,
                               progress=False)
        assert_same_partition(labels, truth, 3)
        same = kmeans_labels(emb.astype(np.float16).astype(np.float32), 3, sample=sample,
                             init="kmeans++", batch_size=128, progress=False)
        np.testing.assert_array_equal(labels, same)


def test_torch_tensor_input_gives_the_numpy_labels():
    emb, _ = blobs(200, 2, 4, 3, seed=8)
    np.testing.assert_array_equal(
        kmeans_labels(torch.from_numpy(emb).half(), 3, progress=False),
        kmeans_labels(emb.astype(np.float16), 3, progress=False))


def test_same_seed_same_labels_other_seed_other_centroids():
    rng = np.random.default_rng(9)
    emb = rng.standard_normal((800, 3, 6)).astype(np.float32)
    for sample in (None, 300):
        a = kmeans_per_position(emb, 8, sample=sample, seed=3, progress=False)
        b = kmeans_per_position(emb, 8, sample=sample, seed=3, progress=False)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.centroids, b.centroids)
        c = kmeans_per_position(emb, 8, sample=sample, seed=4, progress=False)
        assert not np.array_equal(a.centroids, c.centroids)


def test_output_is_clean_below_39_points_per_centroid(capfd):
    rng = np.random.default_rng(10)
    emb = rng.standard_normal((50, 2, 4)).astype(np.float32)  # 50 < 39 * 10
    kmeans_labels(emb, 10, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ----- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(10, 4), (2, 3, 4, 5), (10,)])
def test_not_3d_is_an_error(shape):
    with pytest.raises(DataError, match=r"3-D"):
        kmeans_labels(np.zeros(shape, np.float32), 2, progress=False)


def test_no_windows_is_an_error():
    with pytest.raises(DataError, match=r"N = 0"):
        kmeans_labels(np.zeros((0, 3, 4), np.float32), 2, progress=False)


@pytest.mark.parametrize("k", [0, -3])
def test_fewer_than_one_cluster_is_an_error(k):
    with pytest.raises(DataError, match=r"clusters must be >= 1"):
        kmeans_labels(np.ones((10, 2, 3), np.float32), k, progress=False)


def test_more_clusters_than_windows_is_an_error():
    emb = np.random.default_rng(0).standard_normal((10, 2, 3)).astype(np.float32)
    with pytest.raises(DataError, match=r"H=11 clusters need at least 11 embeddings per "
                                        r"position, got 10; use fewer hidden states or more"):
        kmeans_labels(emb, 11, progress=False)
    assert kmeans_labels(emb, 10, progress=False).shape == (10, 2)  # k == N is fine


def test_more_clusters_than_sample_is_an_error():
    emb = np.random.default_rng(0).standard_normal((100, 2, 3)).astype(np.float32)
    with pytest.raises(DataError, match=r"H=20 clusters need at least 20 .* got 15 .*sample"):
        kmeans_labels(emb, 20, sample=15, progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sample", [None, 10])
def test_non_finite_embeddings_are_an_error(bad, sample):
    emb = np.random.default_rng(0).standard_normal((200, 3, 4)).astype(np.float16)
    emb[137, 2, 1] = bad  # with sample=10 this row is almost surely found only by assignment
    with pytest.raises(DataError, match=r"NaN or infinite .*window 137, position 2"):
        kmeans_labels(emb, 3, sample=sample, batch_size=50, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"sample": 0}, "sample"), ({"niter": 0}, "iterations"), ({"batch_size": 0}, "batch size"),
    ({"seed": -1}, "seed"), ({"init": "bogus"}, "unknown k-means init")])
def test_bad_options_are_errors(kwargs, match):
    emb = np.ones((20, 2, 3), np.float32)
    with pytest.raises(DataError, match=match):
        kmeans_labels(emb, 2, progress=False, **kwargs)


@pytest.mark.skipif(faiss_gpu_available(), reason="FAISS sees a GPU here")
def test_gpu_required_without_gpu_is_a_clear_error():
    emb = np.ones((20, 2, 3), np.float32)
    with pytest.raises(DataError, match=r"use_gpu=True.*no GPU support or sees no GPU"):
        kmeans_labels(emb, 2, use_gpu=True, progress=False)
    assert kmeans_labels(emb, 2, use_gpu=None, progress=False).shape == (20, 2)


def test_nearest_centroids_matches_a_brute_force_oracle():
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(7, 5)).astype(np.float32)
    points = rng.normal(size=(200, 5)).astype(np.float32)
    d2 = ((points[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2
          ).sum(-1)
    got = nearest_centroids(points, centroids)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, d2.argmin(1))
