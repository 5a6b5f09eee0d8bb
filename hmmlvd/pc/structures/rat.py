"""RAT-SPN region graphs: random balanced binary trees (Peharz et al. 2019), as in EiNet's
`random_binary_trees`."""

from __future__ import annotations

import numpy as np

from hmmlvd.core.errors import ParameterError
from hmmlvd.pc.structures.region_graph import Partition, Region, RegionGraph, make_region


def random_binary_tree_partitions(
    num_variables: int, depth: int, rng: np.random.Generator
) -> list[Partition]:
    """The partitions of one random tree: starting from all variables, each region is split
    into two random halves (sizes floor(n/2), ceil(n/2) after a random permutation) until
    `depth` splits have been made along every path or a region has a single variable."""
    partitions: list[Partition] = []
    frontier: list[Region] = [tuple(range(num_variables))]
    for _ in range(depth):
        next_frontier: list[Region] = []
        for region in frontier:
            if len(region) < 2:
                continue
            perm = rng.permutation(np.asarray(region))
            half = len(region) // 2
            left, right = make_region(perm[:half]), make_region(perm[half:])
            partitions.append(Partition(region, (left, right)))
            next_frontier += [left, right]
        frontier = next_frontier
    return partitions


def random_binary_trees(
    num_variables: int, depth: int, num_repetitions: int, seed: int = 0
) -> RegionGraph:
    """`num_repetitions` random binary trees of split depth `depth` sharing the root.

    Regions are identified by scope, so a scope that two repetitions happen to both create is
    one region with the partitions of both (still smooth and decomposable). The same seed
    always gives the same graph.
    """
    if num_variables < 1 or depth < 0 or num_repetitions < 1:
        raise ParameterError(
            "need num_variables >= 1, depth >= 0, num_repetitions >= 1; got "
            f"{num_variables}, {depth}, {num_repetitions}"
        )
    rng = np.random.default_rng(seed)
    partitions: list[Partition] = []
    for _ in range(num_repetitions):
        partitions += random_binary_tree_partitions(num_variables, depth, rng)
    return RegionGraph.from_partitions(
        num_variables, partitions, extra_regions=[tuple(range(num_variables))]
    )
