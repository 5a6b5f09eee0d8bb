"""Reading rows of region-major values [C, B, K] by an index, in chunks, with a backward that
writes each chunk's gradient straight into place.

A source (the leaves, or a layer's regions) hands the rows later layers need to each of them,
in one read whose output is split into one chunk per consuming layer; an einsum layer reads its
left and right children from its input. Reading rows ``index`` and splitting with autograd's
``index_select`` and ``split`` costs, in the backward, a concatenation of the chunks' gradients
and then a zero-filled scatter-add; here each chunk's gradient is scatter-added into the
zero-filled gradient directly:

    grad_values = zeros [C, ...];  grad_values[index_i] += grad_i   for every chunk i

(``index_add_`` is used even where an index reads each row at most once: on the CPU it is
several times faster than ``index_copy_``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RowReader(nn.Module):
    """Reads rows ``index`` [M] of a [C, ...] tensor with C = ``num_rows`` rows, returned as
    chunks of ``sizes`` rows (default one chunk of M)."""

    def __init__(self, index: torch.Tensor, num_rows: int, sizes: Sequence[int] | None = None):
        super().__init__()
        index = index.long()
        self.num_rows = num_rows
        self.sizes = [len(index)] if sizes is None else list(sizes)
        if sum(self.sizes) != len(index):
            raise ValueError(f"chunk sizes {self.sizes} do not add up to {len(index)} rows")
        self.register_buffer("index", index.clone(), persistent=False)

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``values`` [C, ...] -> chunks [sizes[i], ...] of its rows ``index``."""
        if len(values) != self.num_rows:
            raise ValueError(f"expected {self.num_rows} rows, got {len(values)}")
        if not values.requires_grad:
            return tuple(values.index_select(0, self.index).split(self.sizes))
        return _ReadRows.apply(values, self)


class _ReadRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, reader: RowReader) -> tuple[torch.Tensor, ...]:
        ctx.reader = reader
        ctx.set_materialize_grads(False)
        return tuple(values.index_select(0, index) for index in reader.index.split(reader.sizes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        reader: RowReader = ctx.reader
        given = next((g for g in grads if g is not None), None)
        if given is None:
            return None, None
        out = given.new_zeros(reader.num_rows, *given.shape[1:])
        for index, grad in zip(reader.index.split(reader.sizes), grads, strict=True):
            if grad is not None:
                out.index_add_(0, index, grad)
        return out, None
