"""Baseline image circuits (HCLT, PD, RAT): documented default structures, valid parameters,
and exact normalisation by brute force over every tiny image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.image.baselines import (
    BASELINES,
    baseline_graph,
    build_baseline,
    default_delta,
    default_depth,
)


def all_images(num_variables: int, num_categories: int) -> torch.Tensor:
    """[C^D, D] every assignment of D variables with C values."""
    values = itertools.product(range(num_categories), repeat=num_variables)
    return torch.tensor(list(values), dtype=torch.long)


@pytest.mark.parametrize("kind", BASELINES)
@pytest.mark.parametrize(("shape", "categories"), [((2, 2, 1), 2), ((1, 2, 2), 3)])
def test_baselines_are_normalised(kind, shape, categories):
    d = int(np.prod(shape))
    rng = np.random.default_rng(0)
    train = rng.integers(0, categories, size=(50, d))
    circuit = build_baseline(kind, train, shape, size=3, seed=1, num_categories=categories,
                             repetitions=3)
    circuit.check_parameters()
    assert circuit.product == ("hadamard" if kind == "hclt" else "einsum")
    total = torch.logsumexp(circuit.log_likelihood(all_images(d, categories)), 0)
    assert float(total) == pytest.approx(0.0, abs=1e-5)


def test_default_structures_on_28x28():
    assert default_delta((28, 28, 1)) == 7 and default_delta((2, 2, 1)) == 1
    assert default_depth(784) == 6 and default_depth(4) == 1 and default_depth(16) == 1
    train = np.zeros((1, 784), dtype=np.int64)
    pd = baseline_graph("pd", train, (28, 28, 1))
    assert (len(pd.regions), len(pd.partitions)) == (100, 200)  # EiNet's 4x4 blocks of 7x7
    assert min(len(r) for r in pd.leaves()) == 49
    rat = baseline_graph("rat", train, (28, 28, 1), repetitions=2)
    assert {len(r) for r in rat.leaves()} == {12, 13}
    assert len(rat.partitions) == 2 * (2**6 - 1)


def test_hclt_learns_the_dependence_in_its_training_images():
    # pixel 1 copies pixel 0 and pixel 3 copies pixel 2: the tree holds edges 0-1 and 2-3
    # (plus one joining them), so rooted at a centre one copied pair is a subtree of its own
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, size=(2, 400))
    train = np.stack([a, a, b, b], axis=1)
    graph = baseline_graph("hclt", train, (2, 2, 1), tree_bins=4, tree_images=300)
    pairs = {p.parent for p in graph.partitions if len(p.parent) == 2}
    assert pairs in ({(0, 1)}, {(2, 3)})
    assert sum(len(p.children) - 1 for p in graph.partitions) == 3  # D - 1 tree edges


def test_errors():
    train = np.zeros((3, 4), dtype=np.int64)
    with pytest.raises(ParameterError, match="unknown baseline"):
        build_baseline("einet", train, (2, 2, 1), 2)
    with pytest.raises(DataError, match=r"\[N, 9\]"):
        build_baseline("pd", train, (3, 3, 1), 2)
    with pytest.raises(DataError, match="tree images"):
        build_baseline("hclt", train, (2, 2, 1), 2, tree_images=0)
