"""The forward algorithm, written once: log-likelihood, EM counts (by autograd), perplexity,
next-token distributions and conditional sampling all call :func:`forward`.

Each step is one batched matmul ``[B,H] @ [H,H]`` with the log-einsum-exp trick: the emission
column of each window is divided by its maximum (its log-maximum is added back to the
log-likelihood), and the forward vector is renormalised to sum 1 (its log-sum is added too).
So every intermediate lies in [0, 1] with its largest entry near 1, stable at any T and H.

Compute dtype: the recursion runs in the dtype of ``emissions`` (float32, or bfloat16 for the
E-step on hardware with native bf16 matmuls; pass ``transitions`` in the same dtype). What is
rounded in bfloat16 (8 significant bits): the transition matrices, the gathered emissions, the
renormalised forward vector before each matmul, and each matmul's output (accumulated in
float32 inside the matmul, stored as bf16). What stays float32: the emission maxima and their
logs, every normaliser (summed in float32 from the bf16 vector), the log-likelihoods and the
returned ``alpha``. bf16 has float32's 8-bit exponent, so the renormalised vector (sum 1,
largest entry >= 1/H) and the scaled emissions (largest entry 1, or below 1 for a column
whose maximum is under e^-80: dividing by that maximum would overflow) are as far from
underflow as in float32: only precision is lost, never range. Each log normaliser is the
exact log of the sum of the rounded vector, so log p(x) carries only the relative rounding of
the entries (about 2^-9 each, averaging out over H states), not a bias of the scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The smallest log of the number an emission column is divided by (see :func:`forward`).
MIN_LOG_SCALE = -80.0


@dataclass
class ForwardResult:
    """``log_prefix`` [B, L]: log p(x_1..x_t) for t = 1..L (float32, -inf if impossible).
    ``alpha`` [B, H]: p(z_L | x_1..x_L), the filtered state distribution after the last step.
    ``states`` [B, L, H]: p(z_t | x_1..x_t) at every step t (only when asked for; else None)."""

    log_prefix: torch.Tensor
    alpha: torch.Tensor
    states: torch.Tensor | None = None


def forward(initial: torch.Tensor, transitions: torch.Tensor, emissions: torch.Tensor,
            prefix_grads: bool = True, states: bool = False) -> ForwardResult:
    """Run the scaled forward recursion on B windows of length L.

    initial: [H] p(z_1). transitions: [L-1, H, H], transitions[t][i, j] = p(z_{t+2}=j | z_{t+1}=i)
    (a homogeneous model passes an expanded view of its single matrix).
    emissions: [B, L, H], emissions[b, t, h] = p(x_t = window b's token | z_t = h), already
    gathered for the batch, so no [B, L, H, V] tensor ever exists (fastest when each
    ``emissions[:, t]`` is contiguous, as :meth:`HMM.gather_emissions` returns them).

    Differentiable: the gradient of ``log_prefix[:, -1].sum()`` w.r.t. each probability tensor,
    times that tensor, is the expected count of its entries (see :mod:`hmmlvd.hmm.em`).
    ``prefix_grads=False`` treats the per-step normalisers as constants of the backward pass:
    every value is unchanged and the gradient of ``log_prefix[:, -1]`` stays exact (log p is
    the log of the last unnormalised sum plus constants), but gradients of shorter prefixes are
    not, and the backward pass is cheaper. EM uses it.
    ``states``: also return every filtered distribution (forward filtering, backward sampling).
    An emission factor of 1 for every state marginalises that position's word (missing words).
    """
    length = emissions.shape[1]
    dtype = emissions.dtype  # compute dtype of the recursion
    tiny = torch.finfo(torch.float32).tiny
    # Per-step maxima of the emission columns: dividing by them keeps every product in range
    # (log-einsum-exp); they are constants of the recursion (log p is exactly linear in their
    # logs), so they carry no gradient and add no float noise to EM counts.
    # A column of zeros (a word no state emits there) keeps scale 1: the prefix becomes -inf.
    # A column whose maximum is below e^-80 (subnormal factors) is divided by e^-80 instead:
    # the inverse of its maximum would overflow float32 (and bf16), e^80 ~ 5.5e34 does not.
    scale = emissions.detach().amax(dim=-1).float()  # [B, L]
    log_scale = torch.where(scale > 0, scale, 1.0).log().clamp_min(MIN_LOG_SCALE)
    inv_scale = torch.exp(-log_scale).unsqueeze(-1)  # [B, L, 1]
    step_emissions = emissions.unbind(dim=1)  # L x [B, H]; unbind keeps backward linear in L
    step_transitions = transitions.unbind(dim=0)  # L-1 x [H, H]

    def normaliser(unnorm: torch.Tensor, t: int) -> torch.Tensor:
        # [B, 1] float32; 0 if x_1..x_t is impossible
        norm = unnorm.sum(dim=-1, keepdim=True, dtype=torch.float32)
        return norm.detach() if not prefix_grads and t < length - 1 else norm

    unnorm = initial.unsqueeze(0) * (step_emissions[0] * inv_scale[:, 0])  # [B, H]
    norm = normaliser(unnorm, 0)
    log_norms = [norm.squeeze(-1).log()]
    filtered = [unnorm / norm.clamp_min(tiny)] if states else None
    for t in range(1, length):
        # p(z_{t-1} | x_<t) / scale_t (normalised first: 1 / (norm scale_t) may overflow);
        # an impossible prefix (norm 0) stays all-zero
        previous = torch.where(norm > 0, unnorm / norm.clamp_min(tiny), 0.0) * inv_scale[:, t]
        unnorm = (previous.to(dtype) @ step_transitions[t - 1]) * step_emissions[t]
        norm = normaliser(unnorm, t)
        log_norms.append(norm.squeeze(-1).log())
        if states:
            filtered.append(unnorm / norm.clamp_min(tiny))
    log_prefix = (torch.stack(log_norms, dim=1) + log_scale).cumsum(dim=1)  # [B, L]
    return ForwardResult(log_prefix=log_prefix, alpha=unnorm / norm.clamp_min(tiny),
                         states=torch.stack(filtered, dim=1) if states else None)
