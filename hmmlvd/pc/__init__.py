"""Probabilistic circuits: region-graph structures (this increment); layers, EM and queries
follow in later increments."""

from hmmlvd.pc.structures import (
    Partition,
    RegionGraph,
    chain_region_graph,
    chow_liu_tree,
    hclt_region_graph,
    mutual_information,
    poon_domingos,
    random_binary_trees,
)

__all__ = [
    "Partition",
    "RegionGraph",
    "chain_region_graph",
    "chow_liu_tree",
    "hclt_region_graph",
    "mutual_information",
    "poon_domingos",
    "random_binary_trees",
]
