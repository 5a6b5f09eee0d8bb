"""Expectation-maximisation by autograd.

E-step: the expected count of every parameter over a batch is ``theta * d(sum log p(x))/d theta``
(the log-likelihood is multilinear in the parameters), computed by differentiating the one
:func:`~hmmlvd.hmm.forward.forward`. Emission counts stay sparse per batch: the gradient w.r.t.
the gathered emissions [B, T, H] is one row of H counts per (position, token) occurrence.

M-step: ``theta_new = normalise(counts + pseudocount)``, mixed into the model as
``theta <- (1 - a) * theta + a * theta_new`` (a = 1 is the classic full M-step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmmlvd.errors import DataError
from hmmlvd.hmm.forward import forward
from hmmlvd.hmm.model import HMM
from hmmlvd.validate import check_pseudocount, check_step_size


@dataclass
class ExpectedCounts:
    """Expected sufficient statistics of a set of windows under the current model.

    initial [H]; transition [P_A, H, H]; emission as sparse rows: ``emission_rows`` [N] flat
    indices ``p * V + w`` into the [P_B * V, H] view of the emission table, and
    ``emission_values`` [N, H] (rows may repeat); ``state_totals`` [P_B, H] = the emission counts
    summed over words. ``log_likelihood``: sum of log p(x) over the windows; ``num_windows``.
    """

    initial: torch.Tensor
    transition: torch.Tensor
    emission_rows: torch.Tensor
    emission_values: torch.Tensor
    state_totals: torch.Tensor
    log_likelihood: float
    num_windows: int


def expected_counts(hmm: HMM, x: torch.Tensor) -> ExpectedCounts:
    """E-step on full windows x [B, T]: one forward and one backward pass."""
    x = hmm.check_windows(x, exact_length=True)
    batch, length = x.shape
    initial = hmm.initial.detach().requires_grad_()
    transition = hmm.transition.detach().requires_grad_()
    emissions = hmm.gather_emissions(x).requires_grad_()  # [B, T, H] leaf
    with torch.enable_grad():
        log_lik = forward(initial, hmm.transitions_for(length, transition), emissions,
                          prefix_grads=False)
        per_window = log_lik.log_prefix[:, -1]
        impossible = torch.isneginf(per_window).nonzero().flatten().tolist()
        if impossible:
            raise DataError(f"windows {impossible[:5]} have probability 0 under the model, so "
                            "they have no expected counts; train with a pseudocount > 0")
        total = per_window.sum()
        g_init, g_trans, g_emit = torch.autograd.grad(
            total, (initial, transition, emissions), materialize_grads=True)  # T=1: no steps
    emit_counts = emissions.detach() * g_emit  # [B, T, H]
    positions = torch.zeros(length, dtype=torch.long, device=x.device) if hmm.homogeneous \
        else torch.arange(length, device=x.device)
    rows = (positions * hmm.vocab_size + x).flatten()  # [B*T]
    state_totals = emit_counts.sum(0)  # [T, H]
    if hmm.homogeneous:
        state_totals = state_totals.sum(0, keepdim=True)
    # in place: g_trans is a fresh tensor, as large as the transitions
    return ExpectedCounts(initial=g_init.mul_(hmm.initial), transition=g_trans.mul_(hmm.transition),
                          emission_rows=rows,
                          emission_values=emit_counts.reshape(-1, hmm.num_states),
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
                              self.state_totals, self.log_likelihood, self.num_windows)


def maximize(hmm: HMM, counts: ExpectedCounts, step_size: float = 1.0,
             pseudocount: float = 1e-3) -> None:
    """M-step in place: theta <- (1 - a) * theta + a * normalise(counts + pseudocount)."""
    a = check_step_size(step_size)
    c = check_pseudocount(pseudocount, hmm.vocab_size)
    if not all(torch.isfinite(t).all() for t in (counts.initial, counts.transition,
                                                  counts.emission_values)):
        raise DataError("expected counts contain NaN or infinite values")
    _mix(hmm.initial, counts.initial + c, a)
    _mix(hmm.transition, counts.transition + c, a)
    # emission[p, w, h] <- (1-a) emission + a (c + n[p, w, h]) / (N[p, h] + V c), applied as a
    # dense scale-and-shift plus a sparse add over the rows the batch touched.
    norm = counts.state_totals + hmm.vocab_size * c  # [P_B, H]
    step = a * (norm > 0)  # a state with no counts and no pseudocount keeps its distribution
    norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
    hmm.emission.lerp_((c / norm).unsqueeze(1), step.unsqueeze(1))  # one pass over the table
    row_scale = (step / norm).index_select(0, counts.emission_rows // hmm.vocab_size)  # [N, H]
    hmm.emission.view(-1, hmm.num_states).index_add_(
        0, counts.emission_rows, counts.emission_values * row_scale)


def _mix(theta: torch.Tensor, counts: torch.Tensor, step_size: float) -> None:
    """theta <- (1 - a) theta + a counts / counts.sum(-1), in place; rows without counts stay.
    ``counts`` is a temporary of the caller's and is overwritten (no copy of its size)."""
    total = counts.sum(-1, keepdim=True)
    step = step_size * (total > 0)
    theta.mul_(1 - step).add_(counts.mul_(step / total.clamp_min(torch.finfo(total.dtype).tiny)))
