"""The HMM's data-parallel EM reductions (see :mod:`hmmlvd.core.distributed` for the scheme): the
expected counts of this rank's shard, their sum over ranks, the full-batch accumulator's sum,
and rank 0's parameters broadcast to every rank. Each is the identity in a single process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from hmmlvd.core.distributed import all_reduce_sum, is_distributed, shard, world_size
from hmmlvd.hmm.em import CountAccumulator, ExpectedCounts, expected_counts

if TYPE_CHECKING:  # the HMM's verbs call this module; no runtime import of it here
    from hmmlvd.hmm.model import HMM


def zero_counts(hmm: HMM) -> ExpectedCounts:
    """Counts of no windows (a rank whose shard of a small last batch is empty)."""
    h = hmm.num_states
    return ExpectedCounts(
        initial=torch.zeros_like(hmm.initial), transition=torch.zeros_like(hmm.transition),
        emission_rows=torch.zeros(0, dtype=torch.long, device=hmm.device),
        emission_values=torch.zeros(0, h, device=hmm.device, dtype=hmm.emission.dtype),
        state_totals=torch.zeros(hmm.config.emission_positions, h, device=hmm.device),
        log_likelihood=0.0, num_windows=0)


def local_expected_counts(hmm: HMM, x: torch.Tensor) -> ExpectedCounts:
    """E-step on this rank's shard of the batch ``x`` [B, T] (not yet summed over ranks)."""
    part = shard(x)
    return expected_counts(hmm, part) if len(part) else zero_counts(hmm)


def all_reduce_counts(counts: ExpectedCounts, hmm: HMM, emission: str = "auto"
                      ) -> ExpectedCounts:
    """The counts of the whole batch: ``counts`` (this rank's shard) summed over ranks.

    The dense tables (initial [H], transition [P_A, H, H], state totals [P_B, H]) and the
    log-likelihood are summed with ``all_reduce``. Emission counts are sparse rows (one row of
    H per token of the shard, indices ``p * V + w``), which ``all_reduce`` cannot add, so they
    travel in one of two forms, whichever is smaller (``emission="auto"``):

    - ``"rows"``: every rank's rows are gathered (``all_gather``; rank order = batch order)
      and concatenated. Each rank receives B*T rows of H values for a batch of B windows of T
      tokens. The M-step adds repeated rows with ``index_add_``.
    - ``"dense"``: each rank scatters its rows into a [P_B * V, H] table and the tables are
      summed with ``all_reduce``, which moves about twice the table per rank and needs a
      second emission-sized table in memory.

    For mini-batches B*T is far below P_B*V (a batch of 4,096 windows of 32 tokens gives
    131,072 rows; the non-homogeneous table has 32 * 33,278 = 1,064,896), so gathering rows
    moves and stores about 8x less than densifying. Densifying wins only when rows would
    outnumber the table (a homogeneous model with a small vocabulary, or huge batches).
    The tensors of ``counts`` are reduced in place.
    """
    if not is_distributed():
        return counts
    if emission not in ("auto", "rows", "dense"):
        raise ValueError(f"emission must be 'auto', 'rows' or 'dense', got {emission!r}")
    for t in (counts.initial, counts.transition, counts.state_totals):
        dist.all_reduce(t)
    log_likelihood, num_windows = all_reduce_sum(counts.log_likelihood, counts.num_windows)
    device = counts.emission_values.device
    size = torch.tensor([counts.emission_rows.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    table_rows = hmm.config.emission_positions * hmm.vocab_size
    if emission == "dense" or (emission == "auto" and sum(sizes) > table_rows):
        table = torch.zeros(table_rows, hmm.num_states, device=device,
                            dtype=counts.emission_values.dtype)
        table.index_add_(0, counts.emission_rows, counts.emission_values)
        dist.all_reduce(table)
        rows, values = torch.arange(table_rows, device=device), table
    else:
        rows = _all_gather_rows(counts.emission_rows, sizes)
        values = _all_gather_rows(counts.emission_values, sizes)
    return ExpectedCounts(counts.initial, counts.transition, rows, values, counts.state_totals,
                          log_likelihood, int(num_windows))


def _all_gather_rows(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of each rank's ``t`` [sizes[r], ...]; padded
    to the largest size for ``all_gather``, which wants equal shapes."""
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def all_reduce_accumulator(acc: CountAccumulator) -> None:
    """Full-batch EM: sum every rank's dense count tables (one ``all_reduce`` each, once per
    epoch) and the log-likelihoods, in place."""
    if not is_distributed():
        return
    for t in (acc.initial, acc.transition, acc.emission, acc.state_totals):
        dist.all_reduce(t)
    acc.log_likelihood, num_windows = all_reduce_sum(acc.log_likelihood, acc.num_windows)
    acc.num_windows = int(num_windows)


def broadcast_parameters(hmm: HMM) -> None:
    """Overwrite every rank's parameters with rank 0's (in place). Called at the start of
    training and at each epoch end: initialisers and CUDA ``index_add_`` (atomics over
    repeated rows) need not be bitwise deterministic for the ranks to stay identical."""
    if is_distributed():
        for t in (hmm.initial, hmm.transition, hmm.emission):
            dist.broadcast(t, src=0)
