"""Region graphs (what a circuit is), kept separate from the layers that compute them.

A region is a sorted tuple of variable indices; a partition splits a parent region into an
ordered tuple of disjoint child regions whose union is the parent. Builders:
`poon_domingos` (images), `random_binary_trees` (RAT-SPN), `chain_region_graph` (HMM) and
`hclt_region_graph` over a `chow_liu_tree` learned from data (`learn_hclt` does both).
"""

from hmmlvd.pc.structures.chain import chain_region_graph
from hmmlvd.pc.structures.hclt import (
    chow_liu_tree,
    hclt_region_graph,
    learn_hclt,
    mutual_information,
    tree_centre,
)
from hmmlvd.pc.structures.pd import poon_domingos
from hmmlvd.pc.structures.rat import random_binary_tree_partitions, random_binary_trees
from hmmlvd.pc.structures.region_graph import Partition, Region, RegionGraph

__all__ = [
    "Partition",
    "Region",
    "RegionGraph",
    "chain_region_graph",
    "chow_liu_tree",
    "hclt_region_graph",
    "learn_hclt",
    "mutual_information",
    "poon_domingos",
    "random_binary_tree_partitions",
    "random_binary_trees",
    "tree_centre",
]
