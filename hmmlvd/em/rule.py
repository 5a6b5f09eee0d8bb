"""The M-step rule of every model in hmmlvd, and the E-step's probability-zero check.

For a table of distributions theta (normalised over ``dims``), expected counts n of the same
shape, step size a in (0, 1] and pseudocount c >= 0 (a number, or a tensor broadcastable to n:
a pseudocount per outcome, e.g. c * C * prior for a prior over C outcomes):

    target = (n + c) * valid / sum_dims((n + c) * valid)
    theta <- (1 - a) * theta + a * target        for every distribution with sum_dims(n) > 0
    theta <- theta                               for every distribution with no counts

``valid`` (0/1, broadcastable) marks entries that may be non-zero (structural zeros stay 0).
The zero-count policy: the pseudocount smooths the distributions the data reached and never
pulls an unvisited one toward uniform, so a state no window visits keeps its parameters, in an
HMM and in the circuit that compiles it (:func:`hmmlvd.pc.from_hmm.from_hmm`) alike. a = 1 is
the classic M-step; a < 1 is stochastic (mini-batch) EM. The HMM's emission table applies the
same rule lazily (:class:`hmmlvd.hmm.em.ScaledEmission`): the identical update written as a
per-(position, state) scale and shift plus a sparse add over the rows a batch touched.
"""

from __future__ import annotations

import torch

from hmmlvd.core.errors import DataError


def _target(counts: torch.Tensor, dims: tuple[int, ...], pseudocount: float | torch.Tensor,
            valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised smoothed counts: a fresh tensor the caller may overwrite, True where a
    distribution has counts — keeping size-1 ``dims``)."""
    seen = counts.sum(dim=dims, keepdim=True) > 0
    target = counts + pseudocount
    if valid is not None:
        target.mul_(valid)
    total = target.sum(dim=dims, keepdim=True)
    target.div_(total.clamp_min(torch.finfo(target.dtype).tiny))
    return target, seen & (total > 0)


def _mixed(theta: torch.Tensor, counts: torch.Tensor, dims: tuple[int, ...], step_size: float,
           pseudocount: float | torch.Tensor, valid: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta + a * seen * (target - theta) in a fresh tensor, seen): one temporary of
    theta's size; a distribution without counts gets theta + 0, i.e. theta bit for bit."""
    target, seen = _target(counts, dims, pseudocount, valid)
    # theta + a * seen * (target - theta), in one pass over target (lerp's weight 1 - a * seen:
    # exactly theta where unseen, exactly target where a = 1)
    keep = seen.to(target.dtype).mul_(-step_size).add_(1.0)
    return target.lerp_(theta, keep), seen


def mix_probabilities(theta: torch.Tensor, counts: torch.Tensor, dims: tuple[int, ...],
                      step_size: float, pseudocount: float,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """The rule on probabilities ``theta``: returns the new table (same shape; ``theta`` and
    ``counts`` are not changed)."""
    return _mixed(theta, counts, dims, step_size, pseudocount, valid)[0]


def mix_log_probabilities(log_theta: torch.Tensor, counts: torch.Tensor, dims: tuple[int, ...],
                          step_size: float, pseudocount: float | torch.Tensor,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """The rule on log-probabilities: returns the new log-table; distributions without
    counts are returned bit for bit."""
    new, seen = _mixed(log_theta.exp(), counts, dims, step_size, pseudocount, valid)
    if bool(seen.all()):
        return new.log_()
    return torch.where(seen, new.log_(), log_theta)


def check_possible(log_likelihood: torch.Tensor, items: str = "windows",
                   model: str = "model") -> None:
    """:class:`DataError` naming the first ``items`` whose log-likelihood [B] is -inf (or NaN):
    their posterior, and so their expected counts, are undefined."""
    impossible = (~torch.isfinite(log_likelihood)).nonzero().flatten().tolist()
    if impossible:
        raise DataError(f"{items} {impossible[:5]} have probability 0 under the {model}, so EM "
                        "cannot assign them; train with a pseudocount > 0")
