"""The region graph: a probabilistic circuit's structure as plain data.

A *region* is a non-empty sorted tuple of variable indices (its scope); regions are identified
by their scope, so a graph holds each scope at most once. A *partition* splits a parent region
into an ordered tuple of child regions (two for EiNet-style einsum layers, but any k >= 2 is
allowed) whose scopes are pairwise disjoint and union to the parent: that is decomposability.
Because a region is its scope, every partition of a region has the same scope, so the circuit
built from a region graph is smooth by construction. Regions without partitions are *leaves*
(they become input distributions); the *root* is the region over all variables.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hmmlvd.core.errors import ParameterError

Region = tuple[int, ...]


def make_region(variables: Iterable[int]) -> Region:
    """The canonical region (sorted tuple of distinct ints) of a set of variables."""
    return tuple(sorted({int(v) for v in variables}))


@dataclass(frozen=True)
class Partition:
    """One way of splitting `parent` into the disjoint `children` (a product node per entry)."""

    parent: Region
    children: tuple[Region, ...]


@dataclass(frozen=True)
class RegionGraph:
    """Regions over variables 0..num_variables-1 and the partitions that split them.

    `regions` lists every region once; `partitions` every split, in the order the builder made
    them. Use `RegionGraph.from_partitions` to collect the regions automatically, and
    `validate()` to check smoothness, decomposability and the rest.
    """

    num_variables: int
    regions: tuple[Region, ...]
    partitions: tuple[Partition, ...]

    @classmethod
    def from_partitions(
        cls,
        num_variables: int,
        partitions: Iterable[Partition],
        extra_regions: Iterable[Region] = (),
    ) -> RegionGraph:
        """Build a graph from its partitions (duplicates dropped, first occurrence kept); the
        regions are those the partitions mention plus `extra_regions`, sorted by (size, scope)."""
        unique: dict[Partition, None] = {}
        for p in partitions:
            unique.setdefault(p, None)
        regions: set[Region] = set(extra_regions)
        for p in unique:
            regions.add(p.parent)
            regions.update(p.children)
        ordered = tuple(sorted(regions, key=lambda r: (len(r), r)))
        return cls(num_variables=num_variables, regions=ordered, partitions=tuple(unique))

    @property
    def root(self) -> Region:
        """The region over all variables (it need not exist in an invalid graph)."""
        return tuple(range(self.num_variables))

    def partitions_of(self) -> dict[Region, list[Partition]]:
        """Map each region to its partitions (empty list for leaves)."""
        result: dict[Region, list[Partition]] = {r: [] for r in self.regions}
        for p in self.partitions:
            result.setdefault(p.parent, []).append(p)
        return result

    def leaves(self) -> list[Region]:
        """Regions with no partition, in the order of `regions`."""
        parents = {p.parent for p in self.partitions}
        return [r for r in self.regions if r not in parents]

    def region_heights(self) -> dict[Region, int]:
        """Height of each region: 0 for leaves, else 1 + the largest height of any child of any
        of its partitions. Raises ParameterError if the partitions contain a cycle."""
        return _heights(self.regions, self.partitions)

    def topological_layers(self) -> list[list[Partition]]:
        """Partitions grouped into layers, bottom-up: layer i (0-based) holds every partition
        whose parent has height i + 1, so each child region is a leaf or the parent of a
        partition in an earlier layer, and all partitions of one region share a layer (the
        mixing over them can follow right after). Leaves (height 0) are not in any layer."""
        heights = self.region_heights()
        num_layers = max(heights.values(), default=0)
        layers: list[list[Partition]] = [[] for _ in range(num_layers)]
        for p in self.partitions:
            layers[heights[p.parent] - 1].append(p)
        return layers

    def to_dict(self) -> dict:
        """The graph as JSON-ready lists (what a saved circuit's ``config.json`` holds):
        ``{"num_variables": D, "regions": [[v, ...], ...], "partitions": [[parent,
        [child, ...]], ...]}``, regions and partitions in the graph's order."""
        return {"num_variables": self.num_variables,
                "regions": [list(r) for r in self.regions],
                "partitions": [[list(p.parent), [list(c) for c in p.children]]
                               for p in self.partitions]}

    @classmethod
    def from_dict(cls, raw: object) -> RegionGraph:
        """The inverse of :meth:`to_dict`, validated (:meth:`validate`). Anything else (not
        that shape, non-integer variables, an invalid graph) is a :class:`ParameterError`
        naming the problem; ``num_variables`` is checked against the regions before anything
        of its size is built."""
        if not isinstance(raw, dict):
            raise ParameterError(f"a region graph must be a JSON object, got "
                                 f"{type(raw).__name__}")
        lacking = sorted({"num_variables", "regions", "partitions"} - set(raw))
        if lacking:
            raise ParameterError(f"a region graph needs the keys {lacking}")
        num_variables = _json_int(raw["num_variables"], "num_variables")
        regions = _json_list(raw["regions"], "regions")
        largest = max((len(r) for r in regions if isinstance(r, list)), default=0)
        if num_variables > largest:
            raise ParameterError(f"num_variables is {num_variables}, but no region covers "
                                 f"more than {largest} variables (the root region must cover "
                                 "them all)")
        graph = cls(num_variables=num_variables,
                    regions=tuple(_json_region(r) for r in regions),
                    partitions=tuple(_json_partition(p)
                                     for p in _json_list(raw["partitions"], "partitions")))
        graph.validate()
        return graph

    def validate(self) -> None:
        """Raise ParameterError naming the first problem found, else return None.

        Checks, in order: regions are non-empty sorted tuples of distinct in-range ints; no
        region is listed twice; partitions mention only listed regions; the leaves cover every
        variable; a root region covers all variables; the graph is acyclic; each partition has
        at least two children that are pairwise disjoint and union to the parent; every region
        is reachable from the root.
        """
        if self.num_variables < 1:
            raise ParameterError(f"num_variables must be >= 1, got {self.num_variables}")
        for r in self.regions:
            _check_region(r, self.num_variables)
        _check_no_duplicates(self.regions)
        _check_known_regions(self.regions, self.partitions)
        _check_leaf_cover(self.leaves(), self.num_variables)
        if self.root not in set(self.regions):
            raise ParameterError(
                f"no root region: no region covers all {self.num_variables} variables"
            )
        self.region_heights()  # raises on a cycle
        for p in self.partitions:
            _check_decomposable(p)
        _check_reachable(self.root, self.regions, self.partitions)


def _json_int(value: object, what: str) -> int:
    """A JSON integer (not a bool, not a float such as 1e300), else :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{what} must be an integer, got {value!r:.40}")
    return value


def _json_list(value: object, what: str) -> list:
    """A JSON array, else :class:`ParameterError`."""
    if not isinstance(value, list):
        raise ParameterError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _json_region(value: object) -> Region:
    """A region from a JSON list of variable indices (range and order are for
    :meth:`RegionGraph.validate` to check)."""
    return tuple(_json_int(v, "a region's variable") for v in _json_list(value, "a region"))


def _json_partition(value: object) -> Partition:
    """A partition from its JSON form ``[parent, [child, ...]]``."""
    pair = _json_list(value, "a partition")
    if len(pair) != 2:
        raise ParameterError(f"a partition must be [parent, [children]], got {len(pair)} "
                             "entries")
    children = _json_list(pair[1], "a partition's children")
    return Partition(_json_region(pair[0]), tuple(_json_region(c) for c in children))


def _check_region(region: Region, num_variables: int) -> None:
    """A region must be a non-empty, strictly increasing tuple of ints in range."""
    if not isinstance(region, tuple) or len(region) == 0:
        raise ParameterError(f"region {region!r} must be a non-empty tuple of variable indices")
    if any(not 0 <= v < num_variables for v in region):
        raise ParameterError(f"region {region} has variables out of range 0..{num_variables - 1}")
    if any(a >= b for a, b in itertools.pairwise(region)):
        raise ParameterError(f"region {region} is not sorted or repeats a variable")


def _check_no_duplicates(regions: Sequence[Region]) -> None:
    """Each scope may appear once in `regions`."""
    seen: set[Region] = set()
    for r in regions:
        if r in seen:
            raise ParameterError(f"duplicate region {r}: each scope may be listed once")
        seen.add(r)


def _check_known_regions(regions: Sequence[Region], partitions: Sequence[Partition]) -> None:
    """Every parent and child of every partition must be a listed region."""
    known = set(regions)
    for p in partitions:
        for r in (p.parent, *p.children):
            if r not in known:
                raise ParameterError(f"partition {p} mentions region {r} not in the graph")


def _check_leaf_cover(leaves: Sequence[Region], num_variables: int) -> None:
    """The leaf regions together must mention every variable."""
    covered = {v for r in leaves for v in r}
    missing = sorted(set(range(num_variables)) - covered)
    if missing:
        raise ParameterError(f"variables {missing} are in no leaf region")


def _check_decomposable(p: Partition) -> None:
    """Children of a partition: at least two, pairwise disjoint, union equal to the parent."""
    if len(p.children) < 2:
        raise ParameterError(
            f"partition of {p.parent} has {len(p.children)} child; it needs at least 2"
        )
    seen: set[int] = set()
    for child in p.children:
        overlap = seen.intersection(child)
        if overlap:
            raise ParameterError(
                f"partition of {p.parent} is not decomposable: children overlap on "
                f"{sorted(overlap)}"
            )
        seen.update(child)
    if seen != set(p.parent):
        raise ParameterError(
            f"partition of {p.parent} is not decomposable: children cover {sorted(seen)}, "
            "not the parent's scope"
        )


def _check_reachable(
    root: Region, regions: Sequence[Region], partitions: Sequence[Partition]
) -> None:
    """Every region must be reachable from the root through partitions."""
    children_of: dict[Region, list[Region]] = {}
    for p in partitions:
        children_of.setdefault(p.parent, []).extend(p.children)
    seen = {root}
    stack = [root]
    while stack:
        for c in children_of.get(stack.pop(), []):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    unreachable = [r for r in regions if r not in seen]
    if unreachable:
        raise ParameterError(f"regions {unreachable[:5]} are not reachable from the root")


def _heights(regions: Sequence[Region], partitions: Sequence[Partition]) -> dict[Region, int]:
    """Region heights by Kahn's algorithm on the region -> child-region edges (regions are
    mapped to integer ids once, so long scopes are hashed once per mention, not per step)."""
    ids: dict[Region, int] = {}
    for r in regions:
        ids.setdefault(r, len(ids))
    edges: set[tuple[int, int]] = set()
    for p in partitions:
        parent = ids.setdefault(p.parent, len(ids))
        for c in p.children:
            edges.add((parent, ids.setdefault(c, len(ids))))
    children_of: list[list[int]] = [[] for _ in ids]
    parents_of: list[list[int]] = [[] for _ in ids]
    for parent, child in edges:
        children_of[parent].append(child)
        parents_of[child].append(parent)
    pending = [len(ch) for ch in children_of]
    height = [-1] * len(ids)
    ready = [i for i, n in enumerate(pending) if n == 0]
    while ready:
        i = ready.pop()
        height[i] = 1 + max((height[c] for c in children_of[i]), default=-1)
        for parent in parents_of[i]:
            pending[parent] -= 1
            if pending[parent] == 0:
                ready.append(parent)
    if min(height, default=0) < 0:
        stuck = sorted((r for r, i in ids.items() if height[i] < 0), key=lambda r: (len(r), r))
        raise ParameterError(f"region graph has a cycle through regions {stuck[:5]}")
    return {r: height[i] for r, i in ids.items()}
