"""Tests of the region-graph structures in hmmlvd.pc.structures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.pc.structures import (
    Partition,
    RegionGraph,
    chain_region_graph,
    chow_liu_tree,
    hclt_region_graph,
    mutual_information,
    poon_domingos,
    random_binary_tree_partitions,
    random_binary_trees,
    tree_centre,
)

# ---------------------------------------------------------------- helpers


def _graph(num_variables: int, partitions: list[Partition], regions=None) -> RegionGraph:
    """A hand-made graph; regions default to those the partitions mention."""
    if regions is None:
        return RegionGraph.from_partitions(num_variables, partitions)
    return RegionGraph(num_variables, tuple(regions), tuple(partitions))


def _planted_data(n: int, d: int, c: int, seed: int) -> np.ndarray:
    """Categorical data where each variable v > 0 copies a random earlier parent with
    probability 0.4 + 0.5 * v / d (else uniform noise): a planted dependency tree."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), dtype=np.int64)
    x[:, 0] = rng.integers(0, c, n)
    for v in range(1, d):
        parent = int(rng.integers(0, v))
        keep = rng.random(n) < 0.4 + 0.5 * v / d
        x[:, v] = np.where(keep, x[:, parent], rng.integers(0, c, n))
    return x


def _slow_mi(data: np.ndarray, c: int, pseudocount: float) -> np.ndarray:
    """Per-pair, per-sample reference for the smoothed plug-in mutual information."""
    n, d = data.shape
    mi = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if i == j:
                continue
            counts = np.full((c, c), pseudocount)
            for s in range(n):
                counts[data[s, i], data[s, j]] += 1
            p = counts / counts.sum()
            pi, pj = p.sum(1), p.sum(0)
            mi[i, j] = sum(
                p[a, b] * math.log(p[a, b] / (pi[a] * pj[b])) for a in range(c) for b in range(c)
            )
    return mi


def _prufer_trees(d: int):
    """Every labelled tree on d >= 2 vertices, as sorted edge lists, via Prüfer sequences."""
    for seq in itertools.product(range(d), repeat=d - 2):
        degree = [1] * d
        for v in seq:
            degree[v] += 1
        edges = []
        for v in seq:
            leaf = min(u for u in range(d) if degree[u] == 1)
            edges.append((min(leaf, v), max(leaf, v)))
            degree[leaf] -= 1
            degree[v] -= 1
        a, b = [u for u in range(d) if degree[u] == 1]
        edges.append((a, b))
        yield sorted(edges)


def _all_structures() -> list[tuple[str, RegionGraph]]:
    """Every structure the builders make in the tests, labelled."""
    out = []
    for h, w in [(4, 4), (3, 5)]:
        for delta in [1, 2, [1, 2]]:
            out.append((f"pd{h}x{w}d{delta}", poon_domingos(h, w, delta)))
    out.append(("pd3x2c3", poon_domingos(3, 2, 1, num_channels=3)))
    for n, depth, reps, seed in [(7, 1, 1, 0), (16, 3, 4, 1), (10, 5, 3, 2), (1, 2, 2, 0)]:
        out.append((f"rat{n}-{depth}-{reps}-{seed}", random_binary_trees(n, depth, reps, seed)))
    for t in range(1, 7):
        out.append((f"chain{t}", chain_region_graph(t)))
    data = _planted_data(200, 8, 3, seed=5)
    out.append(("hclt8", hclt_region_graph(chow_liu_tree(data, 3))))
    out.append(("hclt8r5", hclt_region_graph(chow_liu_tree(data, 3), root=5)))
    return out


# ---------------------------------------------------------------- validity of builders


@pytest.mark.parametrize(("name", "graph"), _all_structures())
def test_every_structure_validates(name, graph):
    graph.validate()
    assert graph.root in graph.regions, name


@pytest.mark.parametrize(("name", "graph"), _all_structures())
def test_topological_layers_put_children_first(name, graph):
    layers = graph.topological_layers()
    assert sum(len(layer) for layer in layers) == len(graph.partitions), name
    done = set(graph.leaves())
    for layer in layers:
        for p in layer:
            assert all(c in done for c in p.children), name
        done |= {p.parent for p in layer}
    assert graph.root in done
    if graph.partitions:
        assert graph.root in {p.parent for p in layers[-1]}


def test_layers_keep_all_partitions_of_a_region_together():
    graph = poon_domingos(4, 4, 1)
    layer_of = {}
    for i, layer in enumerate(graph.topological_layers()):
        for p in layer:
            assert layer_of.setdefault(p.parent, i) == i


# ---------------------------------------------------------------- validate rejects broken graphs


def test_validate_rejects_overlapping_children():
    g = _graph(3, [Partition((0, 1, 2), ((0, 1), (1, 2)))])
    with pytest.raises(ParameterError, match="overlap"):
        g.validate()


def test_validate_rejects_non_covering_partition():
    g = _graph(
        3,
        [
            Partition((0, 1, 2), ((0,), (1,))),  # misses variable 2
            Partition((0, 1, 2), ((0, 1), (2,))),
            Partition((0, 1), ((0,), (1,))),
        ],
    )
    with pytest.raises(ParameterError, match="not the parent's scope"):
        g.validate()


def test_validate_rejects_missing_variable():
    g = _graph(4, [Partition((0, 1, 2), ((0,), (1, 2))), Partition((1, 2), ((1,), (2,)))])
    with pytest.raises(ParameterError, match=r"variables \[3\] are in no leaf"):
        g.validate()


def test_validate_rejects_root_not_covering_all():
    g = _graph(
        3,
        [Partition((0, 1), ((0,), (1,)))],
        regions=[(0,), (1,), (2,), (0, 1)],
    )
    with pytest.raises(ParameterError, match="no root region"):
        g.validate()


def test_validate_rejects_cycle():
    g = _graph(
        3,
        [
            Partition((0, 1, 2), ((0, 1), (2,))),
            Partition((0, 1), ((0,), (1,))),
            Partition((0, 1), ((0, 1, 2), (1,))),  # back to the root
        ],
    )
    with pytest.raises(ParameterError, match="cycle"):
        g.validate()
    with pytest.raises(ParameterError, match="cycle"):
        g.topological_layers()


def test_validate_rejects_duplicates_out_of_range_single_child_and_unreachable():
    ok = [Partition((0, 1), ((0,), (1,)))]
    with pytest.raises(ParameterError, match="duplicate"):
        _graph(2, ok, regions=[(0,), (1,), (0, 1), (1,)]).validate()
    with pytest.raises(ParameterError, match="out of range"):
        _graph(2, ok, regions=[(0,), (1,), (0, 1), (0, 5)]).validate()
    with pytest.raises(ParameterError, match="not sorted"):
        _graph(2, ok, regions=[(0,), (1,), (0, 1), (1, 0)]).validate()
    with pytest.raises(ParameterError, match="at least 2"):
        _graph(2, [*ok, Partition((0, 1), ((0,),))]).validate()
    with pytest.raises(ParameterError, match="not reachable"):
        _graph(
            3,
            [Partition((0, 1, 2), ((0,), (1, 2))), Partition((0, 1), ((0,), (1,)))],
            regions=[(0,), (1,), (2,), (1, 2), (0, 1), (0, 1, 2)],
        ).validate()
    with pytest.raises(ParameterError, match="not in the graph"):
        _graph(2, ok, regions=[(0,), (0, 1)]).validate()
    _graph(2, ok).validate()  # the unbroken graph passes


# ---------------------------------------------------------------- Poon–Domingos


def test_pd_2x2_delta1_partitions_by_hand():
    g = poon_domingos(2, 2, 1)
    expected = {
        Partition((0, 1, 2, 3), ((0, 1), (2, 3))),  # top / bottom
        Partition((0, 1, 2, 3), ((0, 2), (1, 3))),  # left / right
        Partition((0, 1), ((0,), (1,))),
        Partition((2, 3), ((2,), (3,))),
        Partition((0, 2), ((0,), (2,))),
        Partition((1, 3), ((1,), (3,))),
    }
    assert set(g.partitions) == expected
    assert len(g.partitions) == 6
    assert sorted(g.leaves()) == [(0,), (1,), (2,), (3,)]


def test_pd_counts_rectangles_and_leaves():
    # delta 1 on h x w: every sub-rectangle is a region, each pixel a leaf.
    g = poon_domingos(3, 5, 1)
    assert len(g.regions) == (3 * 4 // 2) * (5 * 6 // 2)
    assert sorted(g.leaves()) == [(v,) for v in range(15)]
    # delta 2 on 4x4: rectangles with sides in {2, 4}, leaves are the 2x2 blocks.
    g2 = poon_domingos(4, 4, 2)
    assert sorted(g2.leaves()) == [(0, 1, 4, 5), (2, 3, 6, 7), (8, 9, 12, 13), (10, 11, 14, 15)]
    assert len(g2.regions) == 9


def test_pd_channels_folded_into_pixels():
    g = poon_domingos(1, 2, 1, num_channels=3)
    assert g.partitions == (Partition((0, 1, 2, 3, 4, 5), ((0, 1, 2), (3, 4, 5))),)


def test_pd_rejects_bad_delta():
    with pytest.raises(ParameterError, match="delta"):
        poon_domingos(2, 2, 0)


# ---------------------------------------------------------------- RAT-SPN


@pytest.mark.parametrize(("n", "depth"), [(8, 2), (13, 3), (5, 4)])
def test_rat_repetition_leaves_partition_variables(n, depth):
    rng = np.random.default_rng(3)
    for _ in range(4):
        parts = random_binary_tree_partitions(n, depth, rng)
        g = RegionGraph.from_partitions(n, parts, extra_regions=[tuple(range(n))])
        g.validate()
        leaves = g.leaves()
        assert sorted(v for leaf in leaves for v in leaf) == list(range(n))
        assert len(leaves) == min(2**depth, n)
        assert all(len(p.children) == 2 for p in parts)
        assert all(abs(len(p.children[0]) - len(p.children[1])) <= 1 for p in parts)


def test_rat_deterministic_per_seed_and_varies_with_seed():
    a = random_binary_trees(16, 3, 4, seed=7)
    b = random_binary_trees(16, 3, 4, seed=7)
    c = random_binary_trees(16, 3, 4, seed=8)
    assert a == b
    assert a != c
    assert len(a.topological_layers()) == 3


def test_rat_repetitions_share_root():
    g = random_binary_trees(12, 2, 5, seed=0)
    roots = [p for p in g.partitions if p.parent == g.root]
    assert len(roots) >= 2  # distinct random splits of the root (5 draws from C(12,6)/2)


# ---------------------------------------------------------------- chain


@pytest.mark.parametrize("t", range(1, 7))
def test_chain_is_right_branching(t):
    g = chain_region_graph(t)
    assert g.partitions == tuple(
        Partition(tuple(range(s, t)), ((s,), tuple(range(s + 1, t)))) for s in range(t - 1)
    )
    assert sorted(g.leaves()) == [(s,) for s in range(t)]
    assert len(g.topological_layers()) == t - 1


# ---------------------------------------------------------------- HCLT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_information_matches_slow_reference(seed):
    data = _planted_data(60, 5, 3, seed)
    fast = mutual_information(data, 3, pseudocount=0.5, block=2)
    slow = _slow_mi(data, 3, 0.5)
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert np.allclose(fast, fast.T)


@pytest.mark.parametrize(("d", "c", "seed"), [(4, 2, 0), (5, 3, 1), (5, 2, 2), (5, 4, 3)])
def test_chow_liu_equals_brute_force_maximum_spanning_tree(d, c, seed):
    data = _planted_data(300, d, c, seed)
    mi = _slow_mi(data, c, 0.01)
    scored = sorted(
        ((sum(mi[i, j] for i, j in tree), tree) for tree in _prufer_trees(d)), reverse=True
    )
    assert len(scored) == d ** (d - 2)
    assert scored[0][0] > scored[1][0] + 1e-9  # unique optimum, so the comparison is exact
    assert chow_liu_tree(data, c, pseudocount=0.01) == scored[0][1]


def test_chow_liu_recovers_planted_chain():
    rng = np.random.default_rng(0)
    n, d = 2000, 6
    x = np.zeros((n, d), dtype=np.int64)
    x[:, 0] = rng.integers(0, 2, n)
    for v in range(1, d):
        flip = rng.random(n) < 0.1
        x[:, v] = np.where(flip, 1 - x[:, v - 1], x[:, v - 1])
    assert chow_liu_tree(x, 2) == [(v, v + 1) for v in range(d - 1)]


def test_hclt_region_graph_by_hand():
    # tree 0-1, 0-2, 2-3 rooted at 0
    g = hclt_region_graph([(0, 1), (0, 2), (2, 3)], root=0)
    assert set(g.partitions) == {
        Partition((0, 1, 2, 3), ((0,), (1,), (2, 3))),
        Partition((2, 3), ((2,), (3,))),
    }
    g.validate()
    g2 = hclt_region_graph([(0, 1), (0, 2), (2, 3)], root=3)
    assert Partition((0, 1, 2, 3), ((3,), (0, 1, 2))) in g2.partitions
    g2.validate()
    assert hclt_region_graph([], num_variables=1).regions == ((0,),)


def test_hclt_rejects_non_tree():
    with pytest.raises(ParameterError, match="connect"):
        hclt_region_graph([(0, 1), (1, 0), (2, 3)], num_variables=4)
    with pytest.raises(ParameterError, match="edges"):
        hclt_region_graph([(0, 1)], num_variables=3)


def test_chow_liu_rejects_bad_data():
    with pytest.raises(DataError, match=r"0\.\.1"):
        chow_liu_tree(np.array([[0, 2], [1, 0]]), 2)
    with pytest.raises(DataError, match="integer"):
        chow_liu_tree(np.zeros((3, 2)), 2)
    with pytest.raises(DataError, match=r"\[N, D\]"):
        chow_liu_tree(np.zeros(3, dtype=np.int64), 2)


def test_tree_centre_minimises_depth():
    chain = [(i, i + 1) for i in range(6)]  # 0-1-2-3-4-5-6: centre 3
    assert tree_centre(chain, 7) == 3
    star = [(4, v) for v in (0, 1, 2, 3, 5)]
    assert tree_centre(star, 6) == 4
