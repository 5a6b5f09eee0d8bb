"""The region graph of an HMM over T positions: a right-branching chain."""

from __future__ import annotations

from hmmlvd.core.errors import ParameterError
from hmmlvd.pc.structures.region_graph import Partition, RegionGraph


def chain_region_graph(num_steps: int) -> RegionGraph:
    """Regions {t..T-1} split into ({t}, {t+1..T-1}) for t = 0..T-2.

    The sum over partition t's product is the transition into the hidden state at t; the leaf
    {t} is the emission at t. For T = 1 the graph is the single leaf {0}.
    """
    if num_steps < 1:
        raise ParameterError(f"a chain needs at least one step, got {num_steps}")
    partitions = [
        Partition(tuple(range(t, num_steps)), ((t,), tuple(range(t + 1, num_steps))))
        for t in range(num_steps - 1)
    ]
    return RegionGraph.from_partitions(
        num_steps, partitions, extra_regions=[tuple(range(num_steps))]
    )
