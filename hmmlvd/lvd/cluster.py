"""Per-position k-means of suffix embeddings (LVD step 3): the cluster of window n's embedding
at position t becomes the latent state z[n, t] that initialises the HMM.

For each position t, FAISS k-means with k = H clusters is trained on that position's
embeddings [N, D] (or on a seeded random sample of rows), then every one of the N rows is
assigned to its nearest centroid. Positions are processed one at a time, and assignment streams
rows in chunks, so an on-disk float16 memmap [N, T, D] larger than RAM works as long as one
position's training rows fit in memory as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from hmmlvd.core.errors import DataError
from hmmlvd.em.stop import check_stop

__all__ = ["INIT_METHODS", "KMeansResult", "faiss_gpu_available", "kmeans_labels",
           "kmeans_per_position"]

#: Centroid initialisations: name -> FAISS ``ClusteringInitMethod_*`` attribute. "random" (k
#: distinct random training points) is FAISS's classic default and works with every version;
#: "kmeans++" (D²-weighted seeding: better centroids, each init costs about one Lloyd iteration
#: or more) and "afkmc2" need a FAISS that has ``ClusteringInitMethod`` (1.15 has it).
INIT_METHODS = {"random": "ClusteringInitMethod_RANDOM",
                "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
                "afkmc2": "ClusteringInitMethod_AFK_MC2"}


@dataclass
class KMeansResult:
    """Result of :func:`kmeans_per_position`.

    ``labels``: int32 [N, T], cluster of each window's embedding at each position, in [0, k).
    ``centroids``: float32 [T, k, D], the centroids of each position.
    ``inertia``: float64 [T], sum over all N rows of the squared L2 distance to the assigned
    centroid, per position.
    """

    labels: np.ndarray
    centroids: np.ndarray
    inertia: np.ndarray


def faiss_gpu_available() -> bool:
    """True when the installed FAISS is built with GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_array(embeddings: Any) -> Any:
    """Keep NumPy arrays/memmaps (and other lazy array-likes with shape/ndim/dtype) as they are;
    torch tensors become (zero-copy where possible) NumPy arrays; anything else goes through
    ``np.asarray``."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(embeddings, torch.Tensor):
        t = embeddings.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(embeddings, np.ndarray) or all(
            hasattr(embeddings, a) for a in ("shape", "ndim", "dtype", "__getitem__")):
        return embeddings
    return np.asarray(embeddings)


def _read(embeddings: Any, rows: slice | np.ndarray, t: int) -> np.ndarray:
    """Rows ``rows`` of position ``t`` as a contiguous float32 array [B, D]."""
    return np.ascontiguousarray(embeddings[rows, t], dtype=np.float32)


def _check_finite(x: np.ndarray, first_row: int | np.ndarray, t: int) -> None:
    """Raise DataError naming the first row of ``x`` [B, D] with a NaN or infinite value.
    ``first_row``: global index of x's first row, or the global indices of x's rows."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        row = int(first_row[bad]) if isinstance(first_row, np.ndarray) else first_row + bad
        raise DataError(f"embeddings contain NaN or infinite values (first at window {row}, "
                        f"position {t}); recompute the embedding cache")


def kmeans_per_position(embeddings: Any, num_clusters: int, *, sample: int | None = None,
                        niter: int = 20, seed: int = 0, use_gpu: bool | None = None,
                        batch_size: int = 65536, progress: bool = True,
                        init: str = "random") -> KMeansResult:
    """FAISS k-means of each position's embeddings; every row assigned to its nearest centroid.

    Args:
        embeddings: array-like [N, T, D] (typically a float16 ``np.memmap``; a torch tensor also
            works). Read one position at a time and converted to contiguous float32.
        num_clusters: k (= the number of hidden states H), at least 1.
        sample: train each position's centroids on a random sample of this many rows (drawn
            with ``seed``, a different sample per position) instead of all N; every row is
            still assigned. ``None`` or a value >= N trains on all rows. FAISS wants at least
            39*k training points for good centroids (it warns below that; this function
            silences the C++ warning), and FAISS's own default caps training at 256*k points,
            a reasonable value for ``sample`` on large N.
        niter: k-means (Lloyd) iterations per position.
        seed: seeds the row samples and FAISS's centroid initialisation; the same seed and
            inputs give the same labels.
        use_gpu: ``None`` = GPU when FAISS has GPU support and sees a GPU, else CPU; ``True`` =
            require a GPU (DataError if unavailable); ``False`` = CPU.
        batch_size: rows read, converted and assigned per chunk.
        progress: show a tqdm bar over positions.
        init: centroid initialisation, a key of :data:`INIT_METHODS`: "random" (default,
            FAISS's classic k random points) or "kmeans++"/"afkmc2" (newer FAISS only).

    Returns:
        KMeansResult with labels int32 [N, T] in [0, k), centroids float32 [T, k, D] and
        inertia float64 [T].

    Raises:
        DataError: embeddings not 3-D or not numeric, N, T or D zero, num_clusters < 1, fewer
            training points per position than clusters, NaN/inf in the embeddings, bad
            ``sample``/``niter``/``batch_size``/``seed``/``init``, or ``use_gpu=True`` without
            a GPU.
    """
    embeddings = _as_array(embeddings)
    if embeddings.ndim != 3:
        raise DataError(f"embeddings must be a 3-D array [windows N, positions T, dim D], "
                        f"got shape {tuple(embeddings.shape)}")
    dtype = np.dtype(embeddings.dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise DataError(f"embeddings must be real numbers, got dtype {dtype}")
    n, length, dim = (int(s) for s in embeddings.shape)
    if n == 0:
        raise DataError("no embeddings to cluster (N = 0 windows)")
    if length == 0 or dim == 0:
        raise DataError(f"embeddings have an empty axis: shape {(n, length, dim)} "
                        f"(positions T and dimension D must be >= 1)")
    if num_clusters < 1:
        raise DataError(f"number of clusters must be >= 1, got {num_clusters}")
    if sample is not None and sample < 1:
        raise DataError(f"k-means sample must be >= 1 rows, got {sample}")
    if niter < 1:
        raise DataError(f"k-means iterations must be >= 1, got {niter}")
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    if init not in INIT_METHODS:
        raise DataError(f"unknown k-means init {init!r}; choose one of {sorted(INIT_METHODS)}")
    init_kw: dict[str, Any] = {}
    if init != "random":
        if not hasattr(faiss, INIT_METHODS[init]):
            raise DataError(f"k-means init {init!r} needs a newer FAISS (this one, "
                            f"{faiss.__version__}, has only random initialisation)")
        init_kw["init_method"] = getattr(faiss, INIT_METHODS[init])
    n_train = n if sample is None else min(sample, n)
    if num_clusters > n_train:
        hint = ("use fewer hidden states or more windows" if n_train == n
                else "use fewer hidden states or a larger k-means sample")
        got = f"{n_train}" if n_train == n else f"{n_train} (k-means sample of {n} windows)"
        raise DataError(f"H={num_clusters} clusters need at least {num_clusters} embeddings "
                        f"per position, got {got}; {hint}")

    gpu_ok = faiss_gpu_available()
    if use_gpu and not gpu_ok:
        raise DataError("GPU k-means was asked for (use_gpu=True) but FAISS has no GPU support "
                        "or sees no GPU; install faiss-gpu (pip install 'hmmlvd[gpu]') on a "
                        "CUDA machine, or pass use_gpu=False/None for CPU")
    gpu = gpu_ok if use_gpu is None else bool(use_gpu)

    k = int(num_clusters)
    labels = np.empty((n, length), dtype=np.int32)
    centroids = np.empty((length, k, dim), dtype=np.float32)
    inertia = np.zeros(length, dtype=np.float64)
    bar = tqdm(range(length), desc=f"k-means (k={k}, {'GPU' if gpu else 'CPU'})", unit="pos",
               disable=not progress)
    for t in bar:
        check_stop("clustering (k-means)")  # one position at a time: stop requests end it
        rng = np.random.default_rng([seed, t])
        if n_train == n:
            # All rows, read in chunks straight into one float32 buffer (no float16 copy).
            x_all = np.empty((n, dim), dtype=np.float32)
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                x_all[lo:hi] = embeddings[lo:hi, t]
                _check_finite(x_all[lo:hi], lo, t)
            train = x_all
        else:
            x_all = None
            rows = np.sort(rng.choice(n, size=n_train, replace=False))
            train = _read(embeddings, rows, t)
            _check_finite(train, rows, t)

        # min_points_per_centroid=1 silences FAISS's C++ "please provide at least 39*k points"
        # warning; max_points_per_centroid above n_train/k stops FAISS from silently
        # subsampling, so `sample` is the only subsampling knob.
        km = faiss.Kmeans(dim, k, niter=niter, seed=int(rng.integers(2**31 - 1)), gpu=gpu,
                          verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=n_train // k + 1, **init_kw)
        km.train(train)
        del train
        centroids[t] = km.centroids
        index = km.index  # a flat L2 index (on the GPU when gpu): refill with final centroids
        index.reset()
        index.add(centroids[t])
        total = 0.0
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            if x_all is not None:
                chunk = x_all[lo:hi]
            else:
                chunk = _read(embeddings, slice(lo, hi), t)
                _check_finite(chunk, lo, t)
            assign, dist = _search(index, chunk)
            labels[lo:hi, t] = assign
            total += float(dist.sum(dtype=np.float64))
        inertia[t] = total
        del x_all
    bar.close()
    return KMeansResult(labels=labels, centroids=centroids, inertia=inertia)


def _search(index: Any, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid [M], its squared L2 distance [M]) of float32 ``points`` [M, D] in a
    FAISS flat L2 ``index``: the one nearest-centroid rule of k-means fitting and of labelling
    new points (:func:`nearest_centroids`)."""
    dist, assign = index.search(np.ascontiguousarray(points, dtype=np.float32), 1)
    return assign[:, 0], dist[:, 0]


def nearest_centroids(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int64 [M]: the index of the nearest (squared L2) of ``centroids`` [C, D] to each of
    ``points`` [M, D], as :func:`kmeans_per_position` assigns its training points."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return _search(index, points)[0].astype(np.int64)


def kmeans_labels(embeddings: Any, num_clusters: int, *, sample: int | None = None,
                  niter: int = 20, seed: int = 0, use_gpu: bool | None = None,
                  batch_size: int = 65536, progress: bool = True,
                  init: str = "random") -> np.ndarray:
    """Latent labels z [N, T] (int32 in [0, num_clusters)) from per-position FAISS k-means of
    ``embeddings`` [N, T, D]; see :func:`kmeans_per_position` for the arguments (FAISS wants
    >= 39*num_clusters training points per position for good centroids)."""
    return kmeans_per_position(embeddings, num_clusters, sample=sample, niter=niter, seed=seed,
                               use_gpu=use_gpu, batch_size=batch_size, progress=progress,
                               init=init).labels
