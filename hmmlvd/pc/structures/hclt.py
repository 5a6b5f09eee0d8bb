"""Hidden Chow–Liu trees (HCLT): a Chow–Liu tree learned from data, and its region graph.

`chow_liu_tree` is the maximum spanning tree of the plug-in pairwise mutual information.
`hclt_region_graph` turns a tree into regions: the region of variable v is its subtree's
variables, split by one partition into ({v}, subtree(c_1), ..., subtree(c_k)) for v's children
c_1 < ... < c_k. Partitions are therefore k-ary (k = 1 + number of children); the layers that
compute them must handle products of more than two child vectors (or binarise them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.em.stop import check_stop
from hmmlvd.pc.structures.region_graph import Partition, Region, RegionGraph

Edge = tuple[int, int]


def _one_hot(data: np.ndarray, num_categories: int) -> np.ndarray:
    """[N, D] ints -> [N, D * C] float64 one-hot (variable-major)."""
    n, d = data.shape
    out = np.zeros((n, d * num_categories), dtype=np.float64)
    cols = np.arange(d) * num_categories + data
    out[np.arange(n)[:, None], cols] = 1.0
    return out


def _check_data(data: np.ndarray, num_categories: int) -> np.ndarray:
    """Validate a [N, D] integer array with values in 0..C-1 and return it as int64."""
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        raise DataError(f"data must be a non-empty [N, D] array, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise DataError(f"data must hold integer categories, got dtype {data.dtype}")
    if num_categories < 1 or data.min() < 0 or data.max() >= num_categories:
        raise DataError(
            f"data values must lie in 0..{num_categories - 1}, got range {data.min()}..{data.max()}"
        )
    return data.astype(np.int64)


def mutual_information(
    data: np.ndarray, num_categories: int, pseudocount: float = 0.01, block: int | None = None
) -> np.ndarray:
    """Pairwise plug-in mutual information [D, D] (nats) of categorical data [N, D].

    Joint counts come from one-hot matrix products (`block` variables at a time to bound
    memory); every cell of every pairwise table gets `pseudocount`, and the marginals are the
    sums of the smoothed joint, so each MI is >= 0 up to rounding. The diagonal is set to 0.
    Memory is about N * D * C floats for the one-hot matrix plus a few block * D * C^2 tables
    (``block`` defaults to what keeps those near 2^24 entries); time grows as D^2 C^2 N, so bin
    many-valued data (e.g. 256 grey levels into 8) first. A stop request (SIGINT / SIGTERM
    under :func:`~hmmlvd.em.stop.signals_request_stop`) ends it after the current block.
    """
    data = _check_data(data, num_categories)
    n, d = data.shape
    c = num_categories
    if block is None:
        block = max(1, 2**24 // (d * c * c))
    onehot = _one_hot(data, c)
    total = n + pseudocount * c * c
    marg = (onehot.sum(0).reshape(d, c) + pseudocount * c) / total  # [D, C]
    log_marg = np.log(marg)
    mi = np.zeros((d, d), dtype=np.float64)
    for start in range(0, d, block):
        check_stop("learning a Chow–Liu tree")  # a block is a bounded step: stop requests end it
        stop = min(start + block, d)
        mi[start:stop] = _block_information(onehot, start, stop, c, log_marg, total, pseudocount)
    np.fill_diagonal(mi, 0.0)
    return np.maximum(mi, 0.0)


def _block_information(onehot: np.ndarray, start: int, stop: int, c: int, log_marg: np.ndarray,
                       total: float, pseudocount: float) -> np.ndarray:
    """Mutual information [stop - start, D] of variables start..stop-1 with every variable,
    from the one-hot data [N, D * C] and the smoothed log marginals [D, C]."""
    d = log_marg.shape[0]
    counts = onehot[:, start * c : stop * c].T @ onehot  # [b*C, D*C]
    joint = (counts.reshape(stop - start, c, d, c) + pseudocount) / total
    ratio = np.log(joint) - log_marg[start:stop, :, None, None] - log_marg[None, None]
    return np.einsum("iajb,iajb->ij", joint, ratio)


def maximum_spanning_tree(weights: np.ndarray) -> list[Edge]:
    """Prim's algorithm on a symmetric [D, D] weight matrix, vectorised over vertices.

    Starts from vertex 0; at each step adds the outside vertex with the largest connecting
    weight (lowest index among ties), attached to the inside vertex that first reached that
    weight (so the tree depends only on `weights`). Returns edges (i, j), i < j, sorted.
    """
    d = weights.shape[0]
    in_tree = np.zeros(d, dtype=bool)
    in_tree[0] = True
    best = weights[0].astype(np.float64).copy()
    attach = np.zeros(d, dtype=np.int64)
    edges: list[Edge] = []
    for _ in range(d - 1):
        candidates = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(candidates))
        edges.append((min(v, int(attach[v])), max(v, int(attach[v]))))
        in_tree[v] = True
        better = (weights[v] > best) & ~in_tree
        best[better] = weights[v][better]
        attach[better] = v
    return sorted(edges)


def chow_liu_tree(data: np.ndarray, num_categories: int, pseudocount: float = 0.01) -> list[Edge]:
    """Edges (i, j), i < j, sorted, of the maximum spanning tree of pairwise mutual
    information of `data` [N, D] with values in 0..num_categories-1 (D - 1 edges)."""
    return maximum_spanning_tree(mutual_information(data, num_categories, pseudocount))


def _rooted_children(
    tree: Sequence[Edge], num_variables: int, root: int
) -> tuple[dict[int, list[int]], list[int]]:
    """Children lists of a tree rooted at `root` and a breadth-first order of its vertices;
    raises ParameterError unless `tree` is a spanning tree on 0..num_variables-1."""
    if not 0 <= root < num_variables:
        raise ParameterError(f"root {root} is not a variable in 0..{num_variables - 1}")
    if len(tree) != num_variables - 1:
        raise ParameterError(
            f"a tree on {num_variables} variables has {num_variables - 1} edges, got {len(tree)}"
        )
    adjacency: dict[int, list[int]] = {v: [] for v in range(num_variables)}
    for i, j in tree:
        if not (0 <= i < num_variables and 0 <= j < num_variables) or i == j:
            raise ParameterError(f"bad tree edge ({i}, {j}) for {num_variables} variables")
        adjacency[i].append(j)
        adjacency[j].append(i)
    children: dict[int, list[int]] = {v: [] for v in range(num_variables)}
    order = [root]
    visited = {root}
    for v in order:  # grows while iterating: breadth-first
        for u in sorted(adjacency[v]):
            if u not in visited:
                visited.add(u)
                children[v].append(u)
                order.append(u)
    if len(order) != num_variables:
        raise ParameterError("tree edges do not connect all variables")
    return children, order


def hclt_region_graph(
    tree: Sequence[Edge], root: int = 0, num_variables: int | None = None
) -> RegionGraph:
    """The HCLT region graph of a tree on variables 0..D-1 rooted at `root`.

    `num_variables` defaults to 1 + the largest index in `tree` (give it for D = 1). Leaves are
    the single-variable regions {v}; each non-leaf tree vertex v contributes one k-ary
    partition subtree(v) -> ({v}, subtree(c_1), ..., subtree(c_k)).
    """
    if num_variables is None:
        num_variables = 1 + max((max(e) for e in tree), default=0)
    children, order = _rooted_children(list(tree), num_variables, root)
    subtree: dict[int, Region] = {}
    partitions: list[Partition] = []
    for v in reversed(order):  # children before parents
        scope = [v] + [u for c in children[v] for u in subtree[c]]
        subtree[v] = tuple(sorted(scope))
        if children[v]:
            parts = ((v,), *(subtree[c] for c in children[v]))
            partitions.append(Partition(subtree[v], parts))
    partitions.reverse()  # root's partition first
    return RegionGraph.from_partitions(
        num_variables, partitions, extra_regions=[tuple(range(num_variables))]
    )


def tree_centre(tree: Sequence[Edge], num_variables: int) -> int:
    """A centre of the tree (the middle vertex of a longest path): rooting an HCLT there
    minimises its depth, i.e. its number of layers."""
    neighbours: list[list[int]] = [[] for _ in range(num_variables)]
    for i, j in tree:
        neighbours[i].append(j)
        neighbours[j].append(i)

    def farthest(start: int) -> list[int]:
        """The path from ``start`` to a vertex farthest from it (that vertex first)."""
        parent = [-1] * num_variables
        seen = [False] * num_variables
        seen[start] = True
        queue, last = deque([start]), start
        while queue:
            last = queue.popleft()
            for n in neighbours[last]:
                if not seen[n]:
                    seen[n], parent[n] = True, last
                    queue.append(n)
        path = [last]
        while parent[path[-1]] >= 0:
            path.append(parent[path[-1]])
        return path

    path = farthest(farthest(0)[0])
    return path[len(path) // 2]


def learn_hclt(data: np.ndarray, num_categories: int, bins: int | None = None) -> RegionGraph:
    """The HCLT region graph of ``data`` [N, D] (values 0..num_categories-1): its Chow–Liu
    tree, learned on values binned to ``bins`` levels if given (``v * bins // C``, what keeps
    256 grey levels affordable), rooted at the tree's centre."""
    data = _check_data(data, num_categories)
    if bins is not None and bins < num_categories:
        data, num_categories = data * bins // num_categories, bins
    num_variables = data.shape[1]
    tree = chow_liu_tree(data, num_categories)
    return hclt_region_graph(tree, root=tree_centre(tree, num_variables),
                             num_variables=num_variables)
