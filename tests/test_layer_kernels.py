"""The product layers' hand-written forward and backward (``_HadamardProduct``,
``_EinsumProduct``) and the chunked row reads (:class:`hmmlvd.pc.rows.RowReader`), against
the same maths written with plain autograd ops, in every input layout the circuit can hand
them, with rows of probability zero (-inf) included."""

from __future__ import annotations

import math

import pytest
import torch

from hmmlvd.pc.layers import EinsumLayer, HadamardLayer, einsum
from hmmlvd.pc.rows import RowReader

B, K = 5, 3


def child_values(count: int, seed: int) -> torch.Tensor:
    """[count, B, K] float64 log-values, one row of zero probability for sample 0."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(count, B, K, generator=g, dtype=torch.float64) * 3 - 2
    values[1, 0] = -math.inf
    return values.requires_grad_()


def gradients(out: torch.Tensor, *inputs: torch.Tensor, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    upstream = torch.rand(out.shape, generator=g, dtype=out.dtype)
    upstream[~torch.isfinite(out.detach())] = 0.0  # a zero-probability output passes on 0
    return list(torch.autograd.grad(out, inputs, upstream))


def without_zero_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values with every all -inf row [.., B, K] replaced by 0, the mask [.., B, 1] of those
    rows): plain autograd through logsumexp of an all -inf row gives 0 / 0 = NaN, so the
    references compute on the finite stand-in and put -inf back with ``torch.where``, which
    passes no gradient to the masked branch."""
    dead = torch.isneginf(values.detach()).all(-1, keepdim=True)
    return torch.where(dead, torch.zeros_like(values), values), dead


def hadamard_reference(values, log_weight, first, edge_child, edge_partition):
    """out[p] = values[first[p]] + sum_{e in p} log sum_j W[e, k, j] exp(values[child_e, j])."""
    safe, dead = without_zero_rows(values[edge_child])
    terms = torch.logsumexp(log_weight[:, None] + safe[:, :, None, :], -1)
    terms = torch.where(dead, torch.full_like(terms, -math.inf), terms)
    out = values[first].clone()
    for e, p in enumerate(edge_partition.tolist()):
        out[p] = out[p] + terms[e]
    return out


@pytest.mark.parametrize("layout", ["block", "block, reordered", "gathered, shared child"])
def test_hadamard_layer_matches_autograd(layout):
    edge_partition = torch.tensor([0, 0, 1, 2, 2, 2])
    if layout == "block":  # first children rows 0..2, edge children rows 3..8 in edge order
        first, edge_child, count = torch.tensor([0, 1, 2]), torch.arange(3, 9), 9
    elif layout == "block, reordered":
        first, edge_child, count = torch.tensor([2, 0, 1]), torch.tensor([7, 3, 8, 5, 4, 6]), 9
    else:  # rows in no particular order, row 1 read twice
        first, edge_child, count = torch.tensor([4, 1, 0]), torch.tensor([1, 2, 5, 3, 6, 1]), 7
    layer = HadamardLayer(first, edge_child, edge_partition, K, torch.Generator().manual_seed(0),
                          num_inputs=count).double()
    assert (layer.reader is None) == layout.startswith("block")
    values = child_values(count, 0)
    out = layer(values)
    expected = hadamard_reference(values, layer.log_weight, first, edge_child, edge_partition)
    torch.testing.assert_close(out, expected)
    got = gradients(out, values, layer.log_weight)
    want = gradients(expected, values, layer.log_weight)
    for a, b in zip(got, want, strict=True):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk_bytes", [None, 1, 2 * B * K * K * 8])
def test_einsum_layer_matches_autograd(chunk_bytes, monkeypatch):
    """... in one chunk of partitions, one partition at a time, and two at a time (4 = 2 + 2
    partitions; float64, so a partition's outer products take B * K * K * 8 bytes)."""
    if chunk_bytes is not None:
        monkeypatch.setattr(einsum, "CHUNK_BYTES", chunk_bytes)
    left, right = torch.tensor([0, 2, 3, 0]), torch.tensor([1, 1, 4, 3])  # shared children
    layer = EinsumLayer(left, right, K, torch.Generator().manual_seed(0)).double()
    values = child_values(5, 2)
    out = layer(values)
    safe_left, dead_left = without_zero_rows(values[left])
    safe_right, dead_right = without_zero_rows(values[right])
    pair = safe_left[:, :, :, None] + safe_right[:, :, None, :]  # [P, B, K, K]
    expected = torch.logsumexp(layer.log_weight[:, None] + pair[:, :, None], dim=(-2, -1))
    expected = torch.where(dead_left | dead_right, torch.full_like(expected, -math.inf),
                           expected)
    torch.testing.assert_close(out, expected)
    for a, b in zip(gradients(out, values, layer.log_weight),
                    gradients(expected, values, layer.log_weight), strict=True):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b)


def test_row_reader_chunks_and_their_gradients():
    index = torch.tensor([3, 0, 3, 5, 1])  # row 3 twice, rows 2 and 4 never
    reader = RowReader(index, 6, sizes=[2, 1, 2])
    values = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    chunks = reader(values)
    expected = values.index_select(0, index).split([2, 1, 2])
    assert [tuple(c.shape) for c in chunks] == [(2, 4), (1, 4), (2, 4)]
    for a, b in zip(chunks, expected, strict=True):
        torch.testing.assert_close(a, b)
    # the middle chunk is not used: its gradient is None and counts as zero
    (chunks[0].sum() * 2 + chunks[2].pow(2).sum()).backward()
    want = torch.zeros(6, 4, dtype=torch.float64)
    want[3] += 2
    want[0] += 2
    want[5] += 2 * values.detach()[5]
    want[1] += 2 * values.detach()[1]
    torch.testing.assert_close(values.grad, want)
    with torch.no_grad():
        assert torch.equal(torch.cat(reader(values)), values.index_select(0, index))
