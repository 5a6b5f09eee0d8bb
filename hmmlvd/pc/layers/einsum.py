"""The EiNet einsum layer: for every binary partition, the outer product of its two children's
K-vectors followed by K_out weighted sums, all partitions of a layer in one einsum."""

from __future__ import annotations

import torch

from hmmlvd.pc.layers.sum_layer import Choice, Picker, SumLayer
from hmmlvd.pc.logspace import exp_shifted, ratio_or_zero
from hmmlvd.pc.rows import RowReader


class EinsumLayer(SumLayer):
    """P partitions, each ``S[k] = sum_{i,j} W[k, i, j] * L[i] * R[j]`` over its left and right
    children's values; ``log_weight`` is [P, K, K, K] (out, left, right), normalised over the
    last two dims.

    Computed in log space with the log-einsum-exp trick: each child vector is shifted by its
    max, exponentiated, contracted with W, and the shifts are added back after the log.
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor, num_units: int,
                 generator: torch.Generator | None = None, num_inputs: int | None = None):
        """``left``, ``right``: [P] indices of the children in the layer's input (the values of
        its C child regions, [C, B, K]; ``num_inputs`` = C, default the largest index + 1)."""
        k = num_units
        super().__init__((len(left), k, k, k), (-2, -1), generator)
        self.register_buffer("left", left.clone(), persistent=False)
        self.register_buffer("right", right.clone(), persistent=False)
        order = torch.cat([left, right])
        if num_inputs is None:
            num_inputs = int(order.max()) + 1 if len(order) else 0
        self.reader = RowReader(order, num_inputs)  # [left children..., right children...]

    def forward(self, values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """``values`` [C, B, K] log-values of the child regions (region-major) -> [P, B, K]
        log-values of the partitions' sums."""
        return _EinsumProduct.apply(self.reader(values)[0], self.weights(normalise))

    def choose_children(self, batch: torch.Tensor, partition: torch.Tensor, unit: torch.Tensor,
                        values: torch.Tensor, pick: Picker) -> list[Choice]:
        """Top-down step of sampling. For N chosen (sample, partition) pairs — ``batch`` [N]
        sample indices, ``partition`` [N] indices into this layer, ``unit`` [N] the sum unit
        chosen above — pick (i, j) with probability ∝ W[p, k, i, j] L[i] R[j], the children's
        log-values taken from ``values`` [B, C, K]. Returns (sample, child index into
        ``values``, child unit) triples for the left and the right child."""
        k = self.log_weight.shape[-1]
        left_ids, right_ids = self.left[partition], self.right[partition]
        logits = (self.log_weight.detach()[partition, unit]
                  + values[batch, left_ids][:, :, None] + values[batch, right_ids][:, None, :])
        flat = pick(logits.flatten(1))
        return [(batch, left_ids, flat // k), (batch, right_ids, flat % k)]


#: Bytes of outer products [partitions, B, K*K] held at once: the layer works through its
#: partitions in chunks of this size, so that the K*K-wide temporaries stay in the CPU's cache
#: instead of going to memory and back (3.5x faster than whole-layer temporaries on a 2-core
#: EPYC at K = 16, B = 512); the backward recomputes them rather than keeping them.
CHUNK_BYTES = 4 * 2**20


def partition_chunks(num_partitions: int, batch: int, k: int, itemsize: int) -> list[slice]:
    """Consecutive slices of the partitions, each with at most :data:`CHUNK_BYTES` of outer
    products (at least one partition)."""
    step = max(1, CHUNK_BYTES // max(1, batch * k * k * itemsize))
    return [slice(start, min(start + step, num_partitions))
            for start in range(0, num_partitions, step)]


class _EinsumProduct(torch.autograd.Function):
    """The layer's forward with its backward written out, chunk by chunk of partitions.

    Input: the rows ``[l_1..l_P, r_1..r_P]`` [2P, B, K] read from the layer's input in one
    gather. Forward, for partition p with children values l, r [B, K]:
    ``x = exp(l - s_l)``, ``y = exp(r - s_r)`` (s the row maxima, 0 where -inf),
    ``o[b, (i, j)] = x[b, i] y[b, j]``, ``m = o W^T`` with W viewed as [K, K*K], and
    ``out = log m + s_l + s_r``.
    Backward, with ``g = dLL/dout`` and ``q = g / m`` (0 where ``m = 0``): ``h = (q W) * o``
    [B, K*K], ``dLL/dl[i] = sum_j h[i, j]``, ``dLL/dr[j] = sum_i h[i, j]``, and for the
    log-weights ``dLL/dlog W = W * (q^T o)`` (the expected counts EM uses)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, log_weight: torch.Tensor) -> torch.Tensor:
        left, right = rows.chunk(2)
        x, left_shift = exp_shifted(left)  # [P, B, K], [P, B, 1]
        y, right_shift = exp_shifted(right)
        p, b, k = x.shape
        weight = log_weight.exp().view(p, k, k * k)
        mapped = x.new_empty(p, b, k)
        for part in partition_chunks(p, b, k, x.element_size()):
            outer = (x[part, :, :, None] * y[part, :, None, :]).view(-1, b, k * k)
            torch.bmm(outer, weight[part].transpose(1, 2), out=mapped[part])
        ctx.save_for_backward(x, y, weight, mapped)
        return torch.log(mapped).add_(left_shift).add_(right_shift)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y, weight, mapped = ctx.saved_tensors
        p, b, k = mapped.shape
        ratio = ratio_or_zero(grad.clone(), mapped)  # [P, B, K]
        grad_rows = grad.new_empty(2 * p, b, k) if ctx.needs_input_grad[0] else None
        grad_weight = weight.new_empty(p, k, k * k) if ctx.needs_input_grad[1] else None
        for part in partition_chunks(p, b, k, x.element_size()):
            outer = (x[part, :, :, None] * y[part, :, None, :]).view(-1, b, k * k)
            if grad_rows is not None:
                spread = torch.bmm(ratio[part], weight[part]).mul_(outer).view(-1, b, k, k)
                torch.sum(spread, 3, out=grad_rows[:p][part])
                torch.sum(spread, 2, out=grad_rows[p:][part])
            if grad_weight is not None:
                torch.bmm(ratio[part].transpose(1, 2), outer, out=grad_weight[part])
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(weight).view(p, k, k, k)
        return grad_rows, grad_weight
