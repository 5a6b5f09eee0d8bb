"""The Hadamard layer: for every partition, the element-wise product of its first child's
K-vector with a K x K weighted sum of each other child's K-vector.

This is the block of hidden Chow–Liu trees and of HMMs: the region of variable v holds
p(x_subtree | Z_v = k), which is p(x_v | Z_v = k) (the first child, v's own leaf) times, for
each child subtree c, ``sum_j p(Z_c = j | Z_v = k) * region_c[j]``. Partitions of any arity
are computed together: one batched matrix product over all (partition, non-first child) edges,
then a scatter-add of their logs into their partitions.
"""

from __future__ import annotations

import torch

from hmmlvd.errors import ParameterError
from hmmlvd.pc.layers.sum_layer import Choice, Picker, SumLayer
from hmmlvd.pc.logspace import exp_shifted, safe_log


class HadamardLayer(SumLayer):
    """P partitions with E non-first child edges; ``log_weight`` is [E, K, K] (parent unit,
    child unit), each row normalised: edge e maps its child's vector c to ``W_e @ c``."""

    def __init__(self, first: torch.Tensor, edge_child: torch.Tensor,
                 edge_partition: torch.Tensor, num_units: int,
                 generator: torch.Generator | None = None):
        """``first`` [P]: index of each partition's first child in the layer's input (the
        values of its child regions, [B, C, K]); ``edge_child`` [E] and ``edge_partition``
        [E]: index of each other child and the partition it feeds
        (edges sorted by partition)."""
        if len(edge_partition) > 1 and bool((edge_partition.diff() < 0).any()):
            raise ParameterError("edge_partition must be sorted")
        k = num_units
        super().__init__((len(edge_child), k, k), (-1,), generator)
        self.register_buffer("first", first.clone(), persistent=False)
        self.register_buffer("edge_child", edge_child.clone(), persistent=False)
        self.register_buffer("edge_partition", edge_partition.clone(), persistent=False)
        degree = torch.bincount(edge_partition, minlength=len(first))
        start = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(degree, 0)])
        self.register_buffer("edge_start", start, persistent=False)  # [P + 1]

    def forward(self, values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """``values`` [B, C, K] of the child regions -> [B, P, K] log-values of the
        partitions."""
        children, shift = exp_shifted(values.index_select(1, self.edge_child))  # [B, E, K]
        weight = self.weights(normalise).exp()  # [E, K, K]
        mapped = torch.bmm(children.transpose(0, 1), weight.transpose(1, 2))  # [E, B, K]
        log_mapped = safe_log(mapped.transpose(0, 1)) + shift  # [B, E, K]
        out = values.index_select(1, self.first)
        return out.index_add(1, self.edge_partition, log_mapped)

    def choose_children(self, batch: torch.Tensor, partition: torch.Tensor, unit: torch.Tensor,
                        values: torch.Tensor, pick: Picker) -> list[Choice]:
        """As ``EinsumLayer.choose_children``: the first child takes the parent's unit k; each
        other child's unit j is picked with probability ∝ W_e[k, j] * child[j]."""
        start = self.edge_start[partition]
        degree = self.edge_start[partition + 1] - start  # [N] non-first children
        pair = torch.repeat_interleave(torch.arange(len(partition), device=batch.device), degree)
        offset = torch.arange(len(pair), device=batch.device) - torch.repeat_interleave(
            torch.cumsum(degree, 0) - degree, degree)
        edge = start[pair] + offset
        child_ids = self.edge_child[edge]
        logits = self.log_weight.detach()[edge, unit[pair]] + values[batch[pair], child_ids]
        return [(batch, self.first[partition], unit), (batch[pair], child_ids, pick(logits))]
