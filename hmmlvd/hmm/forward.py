"""The forward algorithm, written once: log-likelihood, EM counts (by autograd), perplexity,
next-token distributions and conditional sampling all call :func:`forward`.

Each step is one batched matmul ``[B,H] @ [H,H]`` with the log-einsum-exp trick: the emission
column of each window is divided by its maximum (its log-maximum is added back to the
log-likelihood), and the forward vector is renormalised to sum 1 (its log-sum is added too).
So every intermediate lies in [0, 1] with its largest entry near 1, stable at any T and H.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardResult:
    """``log_prefix`` [B, L]: log p(x_1..x_t) for t = 1..L (float32, -inf if impossible).
    ``alpha`` [B, H]: p(z_L | x_1..x_L), the filtered state distribution after the last step."""

    log_prefix: torch.Tensor
    alpha: torch.Tensor


def forward(initial: torch.Tensor, transitions: torch.Tensor,
            emissions: torch.Tensor) -> ForwardResult:
    """Run the scaled forward recursion on B windows of length L.

    initial: [H] p(z_1). transitions: [L-1, H, H], transitions[t][i, j] = p(z_{t+2}=j | z_{t+1}=i)
    (a homogeneous model passes an expanded view of its single matrix).
    emissions: [B, L, H], emissions[b, t, h] = p(x_t = window b's token | z_t = h), already
    gathered for the batch, so no [B, L, H, V] tensor ever exists.

    Differentiable: the gradient of ``log_prefix[:, -1].sum()`` w.r.t. each probability tensor,
    times that tensor, is the expected count of its entries (see :mod:`hmmlvd.hmm.em`).
    """
    tiny = torch.finfo(emissions.dtype).tiny
    # the scale is a constant of the recursion (log p is exactly linear in it): detached, so
    # gradients, and hence EM counts, carry no float noise through it
    scale = emissions.detach().amax(dim=-1, keepdim=True).clamp_min(tiny)  # [B, L, 1]
    # unbind (not indexing in the loop) keeps the backward pass linear in L
    steps = (emissions / scale).unbind(dim=1)  # L x [B, H]
    step_transitions = transitions.unbind(dim=0)  # L-1 x [H, H]
    log_norms = []
    alpha = initial.unsqueeze(0) * steps[0]  # [B, H]
    for t, emission_t in enumerate(steps):
        if t > 0:
            alpha = (alpha @ step_transitions[t - 1]) * emission_t
        norm = alpha.sum(dim=-1, keepdim=True)  # [B, 1]
        alpha = alpha / norm.clamp_min(tiny)
        log_norms.append(norm.squeeze(-1).log())
    log_prefix = torch.stack(log_norms, dim=1) + scale.squeeze(-1).log()  # [B, L]
    return ForwardResult(log_prefix=log_prefix.cumsum(dim=1), alpha=alpha)
