"""Expectation-maximisation by autograd.

E-step: the expected count of every parameter over a batch is ``theta * d(sum log p(x))/d theta``
(the log-likelihood is multilinear in the parameters), computed by differentiating the one
:func:`~hmmlvd.hmm.forward.forward`. Emission counts stay sparse per batch: the gradient w.r.t.
the gathered emissions [B, T, H] is one row of H counts per (position, token) occurrence.

M-step: the rule of :mod:`hmmlvd.em.rule`, shared with the circuits: ``theta_new =
normalise(counts + pseudocount)``, mixed into the model as ``theta <- (1 - a) * theta + a *
theta_new`` (a = 1 is the classic full M-step); a row (a distribution) whose counts are all zero
keeps its values. So an HMM and its circuit (``from_hmm``) take the same EM step.

For the emissions that update is ``e[p, w, h] <- alpha[p, h] * e[p, w, h] + beta[p, h]`` for
every word (``alpha = 1 - a``, ``beta = a c / (N[p, h] + V c)``) plus a sparse add over the rows
the batch touched. :class:`ScaledEmission` keeps the table as ``e = scale * stored + offset``
with per-(position, state) ``scale`` and ``offset`` [P_B, H], so the dense part costs O(P_B H)
and a mini-batch M-step costs in proportion to the rows it touches; the table is written out
(:meth:`ScaledEmission.materialise`) only when the scale gets small, and before anyone else
reads it (checkpoints, evaluation, epoch ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_pseudocount, check_step_size
from hmmlvd.em.rule import check_possible, mix_probabilities
from hmmlvd.hmm.forward import forward
from hmmlvd.hmm.memory import chunk_windows

if TYPE_CHECKING:  # the HMM's verbs call this module; no runtime import of it here
    from hmmlvd.hmm.model import HMM


@dataclass
class ExpectedCounts:
    """Expected sufficient statistics of a set of windows under the current model.

    initial [H]; transition [P_A, H, H]; emission as sparse rows: ``emission_rows`` [N] flat
    indices ``p * V + w`` into the [P_B * V, H] view of the emission table, and
    ``emission_values`` [N, H] (rows may repeat); ``state_totals`` [P_B, H] = the emission counts
    summed over words. ``log_likelihood``: sum of log p(x) over the windows; ``num_windows``.
    ``dense``: the rows are every row of the table in order (``emission_values`` is the whole
    [P_B * V, H] count table, as :meth:`CountAccumulator.total` gives it), so the M-step can
    update the table in place instead of scattering rows.
    """

    initial: torch.Tensor
    transition: torch.Tensor
    emission_rows: torch.Tensor
    emission_values: torch.Tensor
    state_totals: torch.Tensor
    log_likelihood: float
    num_windows: int
    dense: bool = False


class ScaledEmission:
    """An HMM's emission table held as ``emission = scale * stored + offset`` during mini-batch
    EM. ``stored`` is ``hmm.emission`` itself [P_B, V, H]; ``scale`` and ``offset`` are
    [P_B, H] (broadcast over words). While :attr:`exact` is False, ``hmm.emission`` does not
    hold the probabilities: read them through :meth:`gather`, or call :meth:`materialise`.
    """

    #: write the table out once some scale falls below this (and at a = 1, where it is 0)
    MIN_SCALE = 1e-12

    def __init__(self, hmm: HMM):
        self.hmm = hmm
        shape = (hmm.config.emission_positions, hmm.num_states)
        self.scale = torch.ones(shape, dtype=hmm.emission.dtype, device=hmm.device)
        self.offset = torch.zeros(shape, dtype=hmm.emission.dtype, device=hmm.device)
        self.exact = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Emission probabilities of the tokens of checked windows x [B, L] -> [B, L, H]
        (:meth:`HMM.gather_emissions` of the true table)."""
        stored = self.hmm.gather_emissions(x)
        if self.exact:
            return stored
        scale, offset = self.scale, self.offset  # [P_B, H]
        if not self.hmm.homogeneous:
            scale, offset = scale[: x.shape[1]], offset[: x.shape[1]]
        return torch.addcmul(offset, stored, scale)  # [B, L, H], same layout as ``stored``

    def update(self, alpha: torch.Tensor, beta: torch.Tensor, rows: torch.Tensor,
               values: torch.Tensor, weight: torch.Tensor, dense: bool = False) -> None:
        """``e <- alpha * e + beta`` for every word (alpha, beta [P_B, H]), then
        ``e.view(-1, H)[rows] += values * weight[p]`` (rows [N] flat ``p * V + w``, may
        repeat; values [N, H]; weight [P_B, H]). Costs O(P_B H + N H) unless the table has to
        be written out. ``dense``: ``values`` is the whole [P_B * V, H] count table (rows are
        all rows in order): the table is updated in place, with no table-sized temporary."""
        table = self.hmm.emission
        flat = table.view(-1, self.hmm.num_states)
        if dense:
            self.materialise()
            counts = values.view_as(table)
            table.mul_(alpha.unsqueeze(1)).add_(beta.unsqueeze(1))
            table.addcmul_(counts, weight.unsqueeze(1))
            return
        scale = self.scale * alpha
        if scale.min() < self.MIN_SCALE:  # also a = 1 (alpha = 0): update the table itself
            self.materialise()
            table.mul_(alpha.unsqueeze(1)).add_(beta.unsqueeze(1))
        else:
            self.offset.mul_(alpha).add_(beta)
            self.scale = scale
            self.exact = False
            # e' = scale' * stored + offset' + values * weight <=> stored += values * weight/scale'
            weight = weight / scale
        flat.index_add_(0, rows, _times_position_weight(values, rows // self.hmm.vocab_size,
                                                        weight))

    def materialise(self) -> None:
        """Write the true probabilities into ``hmm.emission`` (one pass over the table)."""
        if self.exact:
            return
        self.hmm.emission.mul_(self.scale.unsqueeze(1)).add_(self.offset.unsqueeze(1))
        self.scale.fill_(1.0)
        self.offset.zero_()
        self.exact = True


def _times_position_weight(values: torch.Tensor, positions: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor:
    """values [N, H] times weight[positions] ([P, H] rows picked per value row) -> [N, H].
    The rows of a batch's counts cycle through positions 0..P-1 (window by window), which a
    broadcast multiply serves without gathering N rows of weights."""
    num = weight.shape[0]
    if num == 1:
        return values * weight
    if len(positions) % num == 0 and torch.equal(
            positions.view(-1, num), torch.arange(num, device=positions.device).expand(
                len(positions) // num, num)):
        return (values.view(-1, num, values.shape[1]) * weight).view_as(values)
    return weight.index_select(0, positions).mul_(values)


def expected_counts(hmm: HMM, x: torch.Tensor, emission: ScaledEmission | None = None,
                    dtype: torch.dtype = torch.float32, chunk_size: int | None = None
                    ) -> ExpectedCounts:
    """E-step on full windows x [B, T]: one forward and one backward pass per chunk of
    ``chunk_size`` windows (default :func:`chunk_windows`), counts summed over chunks (exact:
    counts are sums over windows). ``emission``: the table's :class:`ScaledEmission` while
    mini-batch EM holds it scaled. ``dtype``: the compute dtype of the forward/backward (see
    :func:`chunk_counts`); counts and log-likelihoods are float32 either way."""
    x = hmm.check_windows(x, exact_length=True)
    chunk = chunk_windows(hmm.num_states, hmm.length) if chunk_size is None else chunk_size
    if len(x) <= chunk:
        return chunk_counts(hmm, x, emission, dtype)
    # one [B*T, H] table of emission counts, filled chunk by chunk (no concatenated copy)
    values = torch.empty(x.numel(), hmm.num_states, device=hmm.device)
    total = None
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        out = values[start * hmm.length:(start + len(part)) * hmm.length]
        counts = chunk_counts(hmm, part, emission, dtype, out=out)
        if total is None:
            total = counts
            continue
        total.initial += counts.initial
        total.transition += counts.transition
        total.state_totals += counts.state_totals
        total.log_likelihood += counts.log_likelihood
        total.num_windows += counts.num_windows
    positions = torch.zeros(hmm.length, dtype=torch.long, device=x.device) if hmm.homogeneous \
        else torch.arange(hmm.length, device=x.device)
    total.emission_rows = (positions * hmm.vocab_size + x).flatten()
    total.emission_values = values
    return total


def chunk_counts(hmm: HMM, x: torch.Tensor, emission: ScaledEmission | None = None,
                 dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
                 ) -> ExpectedCounts:
    """E-step on checked full windows x [B, T] in one forward and backward pass.

    ``dtype`` bfloat16: the transition matrices and the gathered emissions [B, T, H] are
    rounded to bfloat16 (8 significant bits) and the forward's matmuls, products and their
    backward run in it; the normalisers, log-likelihoods and counts are float32 (see
    :func:`~hmmlvd.hmm.forward.forward`). The counts then carry a relative rounding error of
    about 2^-8 per entry, which EM's own mini-batch noise dwarfs. ``out``: a float32 [B*T, H]
    tensor to write the emission counts into (rows in window-major order)."""
    batch, length = x.shape
    initial = hmm.initial.detach().requires_grad_()
    transition = hmm.transition.detach().requires_grad_()
    gathered = hmm.gather_emissions(x) if emission is None else emission.gather(x)
    emissions = gathered.to(dtype).requires_grad_()  # [B, T, H] leaf
    del gathered
    with torch.enable_grad():
        steps = hmm.transitions_for(length, transition)
        log_lik = forward(initial, steps.to(dtype), emissions, prefix_grads=False)
        per_window = log_lik.log_prefix[:, -1]
        check_possible(per_window, "windows")
        total = per_window.sum()
        g_init, g_trans, g_emit = torch.autograd.grad(
            total, (initial, transition, emissions), materialize_grads=True)  # T=1: no steps
    del log_lik
    if out is None:
        out = torch.empty(batch * length, hmm.num_states, device=hmm.device)
    emit_counts = out.view(batch, length, hmm.num_states)
    torch.mul(emissions.detach(), g_emit, out=emit_counts)  # [B, T, H] float32
    del emissions, g_emit
    positions = torch.zeros(length, dtype=torch.long, device=x.device) if hmm.homogeneous \
        else torch.arange(length, device=x.device)
    rows = (positions * hmm.vocab_size + x).flatten()  # [B*T]
    state_totals = emit_counts.sum(0)  # [T, H]
    if hmm.homogeneous:
        state_totals = state_totals.sum(0, keepdim=True)
    # in place: g_trans is a fresh tensor, as large as the transitions
    return ExpectedCounts(initial=g_init.mul_(hmm.initial), transition=g_trans.mul_(hmm.transition),
                          emission_rows=rows, emission_values=out,
                          state_totals=state_totals, log_likelihood=total.item(),
                          num_windows=batch)


class CountAccumulator:
    """Sums :class:`ExpectedCounts` of many batches into dense tables (for full-batch EM)."""

    def __init__(self, hmm: HMM):
        self.initial = torch.zeros_like(hmm.initial)
        self.transition = torch.zeros_like(hmm.transition)
        self.emission = torch.zeros_like(hmm.emission).view(-1, hmm.num_states)  # [P_B*V, H]
        self.state_totals = torch.zeros(hmm.config.emission_positions, hmm.num_states,
                                        device=hmm.device)
        self.log_likelihood = 0.0
        self.num_windows = 0

    def add(self, counts: ExpectedCounts) -> None:
        self.initial += counts.initial
        self.transition += counts.transition
        self.emission.index_add_(0, counts.emission_rows, counts.emission_values)
        self.state_totals += counts.state_totals
        self.log_likelihood += counts.log_likelihood
        self.num_windows += counts.num_windows

    def total(self) -> ExpectedCounts:
        """All counts so far, with every emission row listed once."""
        rows = torch.arange(self.emission.shape[0], device=self.emission.device)
        return ExpectedCounts(self.initial, self.transition, rows, self.emission,
                              self.state_totals, self.log_likelihood, self.num_windows,
                              dense=True)


def maximize(hmm: HMM, counts: ExpectedCounts, step_size: float = 1.0,
             pseudocount: float = 1e-3, emission: ScaledEmission | None = None) -> None:
    """M-step in place: theta <- (1 - a) * theta + a * normalise(counts + pseudocount).
    ``emission``: keep the emission table scaled in it (mini-batch EM; the caller
    materialises it before reading ``hmm.emission``); None updates ``hmm.emission`` now."""
    a = check_step_size(step_size)
    c = check_pseudocount(pseudocount, hmm.vocab_size)
    # one sum per table: NaN or inf anywhere makes it non-finite (counts are >= 0)
    if not all(torch.isfinite(t.sum()) for t in (counts.initial, counts.transition,
                                                  counts.emission_values)):
        raise DataError("expected counts contain NaN or infinite values")
    for theta, table in ((hmm.initial, counts.initial), (hmm.transition, counts.transition)):
        theta.copy_(mix_probabilities(theta, table, (-1,), a, c))
    # emission[p, w, h] <- (1-a) emission + a (c + n[p, w, h]) / (N[p, h] + V c): a
    # scale-and-shift of every word plus a sparse add over the rows the batch touched. A state
    # without counts at a position keeps its distribution there (pseudocount or not).
    step = a * (counts.state_totals > 0)  # [P_B, H]
    norm = (counts.state_totals + hmm.vocab_size * c).clamp_min(torch.finfo(step.dtype).tiny)
    scaled = emission or ScaledEmission(hmm)
    scaled.update(1 - step, c * step / norm, counts.emission_rows, counts.emission_values,
                  step / norm, dense=counts.dense)
    if emission is None:
        scaled.materialise()
