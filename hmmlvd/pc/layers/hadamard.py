"""The Hadamard layer: for every partition, the element-wise product of its first child's
K-vector with a K x K weighted sum of each other child's K-vector.

This is the block of hidden Chow–Liu trees and of HMMs: the region of variable v holds
p(x_subtree | Z_v = k), which is p(x_v | Z_v = k) (the first child, v's own leaf) times, for
each child subtree c, ``sum_j p(Z_c = j | Z_v = k) * region_c[j]``. Partitions of any arity
are computed together: one batched matrix product over all (partition, non-first child) edges,
then a scatter-add of their logs into their partitions.

The layer reads its input in *block layout* when it can: the first children of all partitions
are rows 0..P-1 (in any order) and the other children rows P..P+E-1, so that both are slices
of the input and nothing is gathered (the circuit lays its inputs out so). Any other layout is
gathered into that one first.
"""

from __future__ import annotations

import torch

from hmmlvd.core.errors import ParameterError
from hmmlvd.pc.layers.sum_layer import Choice, Picker, SumLayer
from hmmlvd.pc.logspace import exp_shifted, ratio_or_zero
from hmmlvd.pc.rows import RowReader


class HadamardLayer(SumLayer):
    """P partitions with E non-first child edges; ``log_weight`` is [E, K, K] (parent unit,
    child unit), each row normalised: edge e maps its child's vector c to ``W_e @ c``."""

    def __init__(self, first: torch.Tensor, edge_child: torch.Tensor,
                 edge_partition: torch.Tensor, num_units: int,
                 generator: torch.Generator | None = None, num_inputs: int | None = None):
        """``first`` [P]: index of each partition's first child in the layer's input (the
        values of its C child regions, [C, B, K]; ``num_inputs`` = C, default the largest
        index + 1); ``edge_child`` [E] and ``edge_partition`` [E]: index of each other child
        and the partition it feeds (edges sorted by partition)."""
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
        num_first, order = len(first), torch.cat([first, edge_child])
        if num_inputs is None:
            num_inputs = int(order.max()) + 1 if len(order) else 0
        block = (num_inputs == len(order)
                 and torch.equal(first.sort().values, torch.arange(num_first))
                 and torch.equal(edge_child.sort().values,
                                 torch.arange(num_first, len(order))))
        # block layout: no gather; otherwise gather [first children..., edge children...]
        self.reader = None if block else RowReader(order, num_inputs)
        # edge at block row P + j is edge edge_order[j]; partition p's first child is row
        # first_row[p] (None where these are the identity)
        edge_order = edge_child.argsort() if block else torch.arange(len(edge_child))
        first_row = first if block else torch.arange(num_first)
        identity = torch.equal(edge_order, torch.arange(len(edge_order)))
        self.register_buffer("edge_order", None if identity else edge_order, persistent=False)
        self.register_buffer("block_partition", edge_partition[edge_order], persistent=False)
        identity = torch.equal(first_row, torch.arange(num_first))
        self.register_buffer("first_row", None if identity else first_row, persistent=False)

    def forward(self, values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """``values`` [C, B, K] log-values of the child regions (region-major) -> [P, B, K]
        log-values of the partitions."""
        rows = values if self.reader is None else self.reader(values)[0]
        log_weight = self.weights(normalise)
        if self.edge_order is not None:
            log_weight = log_weight.index_select(0, self.edge_order)
        return _HadamardProduct.apply(rows, log_weight, self.block_partition, self.first_row,
                                      len(self.first))

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


class _HadamardProduct(torch.autograd.Function):
    """The layer's forward with its backward written out (one pass per elementwise step, two
    batched matrix products, no autograd bookkeeping per step).

    Input: ``rows`` [P + E, B, K] in block layout — first children (row ``first_row[p]``
    for partition p, or row p), then the edges' children c_e — and the edges' log-weights
    [E, K, K] and partitions p(e) in the same edge order. Forward, per edge:
    ``s_e = max_j c_e[:, j]`` (0 where -inf), ``x_e = exp(c_e - s_e)``, ``m_e = x_e W_e^T``,
    ``out_p = first_p + sum_{e in p} (log m_e + s_e)``.
    Backward, with ``g_p = dLL/dout_p`` and ``r_e = g_{p(e)} / m_e`` (0 where ``m_e = 0``):
    ``dLL/dfirst_p = g_p``, ``dLL/dc_e = (r_e W_e) * x_e``, and for the log-weights
    ``dLL/dlog W_e = W_e * (r_e^T x_e)`` (the expected edge counts EM uses). The shift s_e
    cancels, so treating it as a constant is exact."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, log_weight: torch.Tensor, edge_partition: torch.Tensor,
                first_row: torch.Tensor | None, num_first: int) -> torch.Tensor:
        first, children = rows[:num_first], rows[num_first:]
        scaled, shift = exp_shifted(children)  # [E, B, K], [E, B, 1]
        weight = log_weight.exp()  # [E, K, K]
        mapped = torch.bmm(scaled, weight.transpose(1, 2))  # [E, B, K]
        ctx.save_for_backward(scaled, weight, mapped, edge_partition, first_row)
        if first_row is not None:
            first = first.index_select(0, first_row)
        # the shifts are summed per partition first ([P, B, 1]: small), then added with first
        shifts = shift.new_zeros(len(first), *shift.shape[1:]).index_add_(0, edge_partition,
                                                                           shift)
        return (first + shifts).index_add_(0, edge_partition, torch.log(mapped))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled, weight, mapped, edge_partition, first_row = ctx.saved_tensors
        ratio = ratio_or_zero(grad.index_select(0, edge_partition), mapped)  # [E, B, K]
        grad_rows = grad_weight = None
        if ctx.needs_input_grad[0]:
            num_first = len(grad)
            grad_rows = grad.new_empty(num_first + len(mapped), *grad.shape[1:])
            if first_row is None:
                grad_rows[:num_first] = grad
            else:
                grad_rows[:num_first].index_copy_(0, first_row, grad)
            torch.bmm(ratio, weight, out=grad_rows[num_first:]).mul_(scaled)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(ratio.transpose(1, 2), scaled).mul_(weight)
        return grad_rows, grad_weight, None, None, None
