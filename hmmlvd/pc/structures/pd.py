"""Poon–Domingos (PD) region graphs for images (Poon & Domingos 2011; EiNet's
`poon_domingos_structure`).

Every rectangle of pixels is split along each axis at every offset that is a positive multiple
of some step in `delta`, measured from the rectangle's own top / left edge (as EiNet does), into
two smaller rectangles; the recursion stops at rectangles that no step can split. Variables are
pixel indices in row-major order; with `num_channels` C > 1 the channels are folded into the
pixel (variable `(row * width + col) * C + channel`, i.e. HWC order), so a region always holds
all channels of its pixels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from hmmlvd.core.errors import ParameterError
from hmmlvd.pc.structures.region_graph import Partition, Region, RegionGraph

Rect = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open


def _rect_region(rect: Rect, index: np.ndarray, cache: dict[Rect, Region]) -> Region:
    """The sorted variable indices of the pixels (all channels) in a rectangle, memoised
    (`index` is the [H, W, C] array of variable indices)."""
    region = cache.get(rect)
    if region is None:
        r0, r1, c0, c1 = rect
        region = tuple(index[r0:r1, c0:c1].ravel().tolist())
        cache[rect] = region
    return region


def _normalise_delta(delta: int | Sequence[int]) -> list[int]:
    """Steps as a sorted list of distinct positive ints."""
    steps = [delta] if isinstance(delta, int) else list(delta)
    if not steps or any(not isinstance(d, int) or d < 1 for d in steps):
        raise ParameterError(f"delta must be a positive int or a list of them, got {delta!r}")
    return sorted(set(steps))


def _splits(rect: Rect, steps: list[int]) -> list[tuple[Rect, Rect]]:
    """All (top, bottom) then all (left, right) splits of a rectangle at multiples of a step."""
    r0, r1, c0, c1 = rect
    rows = sorted({p for d in steps for p in range(r0 + d, r1, d)})
    cols = sorted({p for d in steps for p in range(c0 + d, c1, d)})
    return [((r0, p, c0, c1), (p, r1, c0, c1)) for p in rows] + [
        ((r0, r1, c0, p), (r0, r1, p, c1)) for p in cols
    ]


def poon_domingos(
    height: int, width: int, delta: int | Sequence[int], num_channels: int = 1
) -> RegionGraph:
    """The PD region graph of a `height` x `width` image with split steps `delta`.

    Each partition is binary: (top, bottom) or (left, right). Rectangles are visited
    breadth-first from the whole image, each once, so the result is deterministic.
    """
    if height < 1 or width < 1 or num_channels < 1:
        raise ParameterError(
            f"image shape must be positive, got {height}x{width} with {num_channels} channels"
        )
    steps = _normalise_delta(delta)
    index = np.arange(height * width * num_channels).reshape(height, width, num_channels)
    cache: dict[Rect, Region] = {}
    root: Rect = (0, height, 0, width)
    queue = deque([root])
    seen = {root}
    partitions: list[Partition] = []
    while queue:
        rect = queue.popleft()
        parent = _rect_region(rect, index, cache)
        for a, b in _splits(rect, steps):
            children = (_rect_region(a, index, cache), _rect_region(b, index, cache))
            partitions.append(Partition(parent, children))
            for child in (a, b):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
    return RegionGraph.from_partitions(
        height * width * num_channels,
        partitions,
        extra_regions=[_rect_region(root, index, cache)],
    )
