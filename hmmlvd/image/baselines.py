"""Baseline circuits for images of categorical pixels, with documented structure choices.

Pixels are variables in HWC order (``hmmlvd.data.images.flatten``); every baseline has
categorical inputs over ``num_categories`` grey levels and K units per region.

- ``"hclt"`` (hidden Chow–Liu tree, Liu & Van den Broeck 2021): Hadamard layers over the
  Chow–Liu tree of the first ``tree_images`` training images, their pixels binned to
  ``tree_bins`` levels (``v * bins // num_categories``) for the mutual information (exact
  256-level tables would cost D^2 * 256^2 * N), rooted at the tree's centre (fewest layers).
- ``"pd"`` (Poon–Domingos, EinsumNetworks): einsum layers over every split of every rectangle
  at multiples of ``delta`` pixels; the default ``delta`` is min(H, W) // 4, i.e. 7 on 28x28
  (EiNet's MNIST setting: 4x4 leaf blocks of 7x7 pixels).
- ``"rat"`` (RAT-SPN, Peharz et al. 2019): einsum layers over ``repetitions`` random balanced
  binary trees sharing the root (a mixing layer picks among them); the default ``depth`` is
  the deepest whose leaves keep at least ``RAT_MIN_LEAF`` variables (6 on 784 pixels: leaves
  of 12-13 pixels), each leaf a factorised K-component mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.core.validate import check_int
from hmmlvd.pc.circuit import Circuit
from hmmlvd.pc.structures import RegionGraph, learn_hclt, poon_domingos, random_binary_trees

BASELINES = ("hclt", "pd", "rat")
PRODUCT = {"hclt": "hadamard", "pd": "einsum", "rat": "einsum"}
RAT_MIN_LEAF = 8  # default RAT depth: the deepest whose leaves keep >= this many variables
GREY_LEVELS = 256  # the values of a pixel of the images the baselines model


@dataclass(frozen=True)
class StructureConfig:
    """Structure settings of the baselines, checked when made (DataError naming the setting by
    its flag of ``hmmlvd image train``: ``tree_bins`` is ``--tree-bins``): ``delta`` (PD
    split step; None: :func:`default_delta`), ``depth`` and ``repetitions`` (RAT-SPN; depth
    None: :func:`default_depth`), ``tree_bins`` and ``tree_images`` (HCLT's Chow–Liu tree:
    grey levels binned to ``tree_bins``, at most the :data:`GREY_LEVELS` of a pixel, learned
    from the first ``tree_images`` images)."""

    delta: int | None = None
    depth: int | None = None
    repetitions: int = 10
    tree_bins: int = 8
    tree_images: int = 5000

    def __post_init__(self) -> None:
        for name in ("delta", "depth", "repetitions", "tree_images"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), "--" + name.replace("_", "-"), 1)
        check_tree_bins(self.tree_bins)

    def describe(self, kind: str, shape: tuple[int, int, int], train_size: int) -> str:
        """Baseline ``kind``'s structure in words (defaults resolved) for images of
        ``shape`` and ``train_size`` training images."""
        if kind == "pd":
            delta = default_delta(shape) if self.delta is None else self.delta
            return f"split step delta={delta}, einsum layers"
        if kind == "rat":
            depth = default_depth(math.prod(shape)) if self.depth is None else self.depth
            return f"depth={depth} x {self.repetitions} repetitions, einsum layers"
        return (f"Chow–Liu tree of {min(self.tree_images, train_size)} training images "
                f"binned to {self.tree_bins} levels, rooted at its centre, Hadamard layers")


def check_tree_bins(bins: object) -> int:
    """``bins`` as the grey-level bins of a Chow–Liu tree over pixels (HCLT's, image LVD's): an
    integer in [2, :data:`GREY_LEVELS`]; DataError naming ``--tree-bins`` otherwise."""
    if (isinstance(bins, bool) or not isinstance(bins, int | np.integer)
            or not 2 <= bins <= GREY_LEVELS):
        raise DataError(f"--tree-bins must be in [2, {GREY_LEVELS}] (tree_bins; pixels have "
                        f"{GREY_LEVELS} grey levels), got {bins!r}")
    return int(bins)


def default_delta(shape: tuple[int, int, int]) -> int:
    """PD split step for an (H, W, C) image: min(H, W) // 4, at least 1 (7 for 28x28)."""
    return max(1, min(shape[:2]) // 4)


def default_depth(num_variables: int) -> int:
    """RAT split depth: the largest whose leaves keep >= RAT_MIN_LEAF variables, at least 1
    (6 for 784 variables)."""
    return max(1, math.floor(math.log2(max(1, num_variables // RAT_MIN_LEAF))))


def baseline_graph(kind: str, train: np.ndarray, shape: tuple[int, int, int], seed: int = 0,
                   num_categories: int = 256, delta: int | None = None,
                   depth: int | None = None, repetitions: int = 10, tree_bins: int = 8,
                   tree_images: int = 5000) -> RegionGraph:
    """The region graph of baseline ``kind`` for images of ``shape`` (H, W, C); ``train``
    [N, H*W*C] (values 0..num_categories-1) is only read by HCLT (its first ``tree_images``
    rows). ``None`` for ``delta`` / ``depth`` takes the defaults above."""
    if kind not in BASELINES:
        raise ParameterError(f"unknown baseline {kind!r}; expected one of {BASELINES}")
    height, width, channels = shape
    num_variables = height * width * channels
    train = np.asarray(train)
    if train.ndim != 2 or train.shape[1] != num_variables or len(train) == 0:
        raise DataError(f"training data must be a non-empty [N, {num_variables}] array for "
                        f"{height}x{width}x{channels} images, got shape {train.shape}")
    if kind == "hclt":
        check_int(tree_images, "tree images", 1)
        check_int(tree_bins, "tree bins", 2)
        return learn_hclt(train[:tree_images], num_categories, bins=tree_bins)
    if kind == "pd":
        return poon_domingos(height, width, default_delta(shape) if delta is None else delta,
                             num_channels=channels)
    check_int(repetitions, "repetitions", 1)
    return random_binary_trees(num_variables, default_depth(num_variables)
                               if depth is None else depth, repetitions, seed=seed)


def build_baseline(kind: str, train: np.ndarray, shape: tuple[int, int, int], size: int,
                   seed: int = 0, num_categories: int = 256, delta: int | None = None,
                   depth: int | None = None, repetitions: int = 10, tree_bins: int = 8,
                   tree_images: int = 5000) -> Circuit:
    """A randomly initialised baseline circuit (see the module docstring) with K = ``size``
    over images of ``shape``; ``train`` [N, D] as in :func:`baseline_graph`. ``seed`` seeds
    the parameters and the RAT trees."""
    graph = baseline_graph(kind, train, shape, seed, num_categories, delta, depth, repetitions,
                           tree_bins, tree_images)
    return Circuit(graph, size, input="categorical", num_categories=num_categories,
                   product=PRODUCT[kind], seed=seed)


def baseline_from_config(kind: str, train: np.ndarray, shape: tuple[int, int, int], size: int,
                         structure: StructureConfig, seed: int = 0,
                         num_categories: int = 256) -> Circuit:
    """:func:`build_baseline` with the structure settings of ``structure``."""
    return build_baseline(kind, train, shape, size, seed, num_categories, structure.delta,
                          structure.depth, structure.repetitions, structure.tree_bins,
                          structure.tree_images)
