"""The log-einsum-exp trick shared by the sum layers (their M-step rule is
:func:`hmmlvd.em.rule.mix_log_probabilities`).

A sum layer computes ``log sum_j W[k, j] exp(P[j])`` for log-values P that may be very
negative. Subtracting the (detached) max of P before exponentiating keeps every exponential in
(0, 1]; the max is added back after the log. The result does not depend on the shift, so
detaching it leaves the gradients exact. Rows whose values are all -inf (probability zero) get
a shift of 0, so they stay -inf instead of turning into NaN.
"""

from __future__ import annotations

import torch


def exp_shifted(log_values: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split log-values into ``exp(log_values - shift)`` (entries in [0, 1]) and ``shift``.

    ``shift`` is the detached max over ``dim`` (kept as a size-1 dim), 0 where that max is
    -inf; so ``log_values == shift + log(scaled)`` wherever the values are finite.
    """
    shift = log_values.detach().amax(dim=dim, keepdim=True)
    shift.masked_fill_(torch.isneginf(shift), 0.0)  # a fresh tensor: in place is safe
    return (log_values - shift).exp_(), shift


class _SafeLog(torch.autograd.Function):
    """log with the backward ``grad / values``, 0 where a value is 0 (one fused pass each way:
    no masks or filled temporaries in the forward)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(values)
        return torch.log(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (values,) = ctx.saved_tensors
        return ratio_or_zero(grad, values, in_place=False)


def ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor,
                  in_place: bool = True) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is 0 (the backward of ``log``
    at a value of probability zero, whose upstream gradient is 0: 0, not 0 / 0 = NaN).
    ``in_place``: divide into ``numerator`` (a temporary the caller owns)."""
    out = numerator.div_(denominator) if in_place else numerator / denominator
    # x / 0 is the only source of NaN or inf here (the gradients are finite)
    return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def safe_log(values: torch.Tensor) -> torch.Tensor:
    """``log`` of non-negative values, -inf where a value is 0, with gradient 0 there instead
    of NaN. (A unit of value 0 inside a circuit of positive likelihood gets an upstream gradient
    of 0, which plain ``log``'s backward turns into 0 / 0 = NaN.)"""
    return _SafeLog.apply(values)


def log_sum_exp(log_values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch.logsumexp`` over ``dim`` whose gradient is 0, not NaN, where every value of a
    row is -inf."""
    scaled, shift = exp_shifted(log_values, dim)
    return safe_log(scaled.sum(dim)) + shift.squeeze(dim)


def log_normalise(log_weights: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Log-weights normalised so that their exponentials sum to 1 over ``dims``."""
    return log_weights - torch.logsumexp(log_weights, dim=dims, keepdim=True)
