"""What every layer of sum nodes shares: normalised log-weights, and EM through autograd.

A sum layer stores ``log_weight``, log-probabilities normalised over ``norm_dims``. The forward
pass uses ``exp(log_weight)``, so after ``backward()`` of the summed log-likelihood the gradient
w.r.t. ``log_weight`` is ``W * dLL/dW``: the expected number of times each edge is used, i.e.
the E-step's counts (they accumulate over backward passes, which gives full-batch EM for free).
``maximize_`` turns those counts into new weights. For gradient training (Adam) the weights
are treated as logits and normalised inside the forward pass (``normalise=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from hmmlvd.core.errors import ParameterError
from hmmlvd.em.rule import mix_log_probabilities
from hmmlvd.pc.logspace import log_normalise

Picker = Callable[[torch.Tensor], torch.Tensor]
"""Maps [N, M] unnormalised log-probabilities to [N] chosen indices (a sample or the argmax)."""
Choice = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(sample index, child index in the layer's input, chosen unit of that child), each [M]."""


class SumLayer(nn.Module):
    """Holds ``log_weight`` (normalised over ``norm_dims``) and, optionally, a boolean
    ``valid`` mask of the same shape: entries outside it are structural zeros (-inf) that EM
    and normalisation keep at zero."""

    def __init__(self, shape: tuple[int, ...], norm_dims: tuple[int, ...],
                 generator: torch.Generator | None = None,
                 valid: torch.Tensor | None = None):
        super().__init__()
        self.norm_dims = norm_dims
        if valid is not None:
            self.register_buffer("valid", valid.clone(), persistent=False)
        else:
            self.valid = None
        raw = torch.rand(shape, generator=generator) + 0.01
        self.log_weight = nn.Parameter(self._project(torch.log(raw)))

    def _project(self, log_weight: torch.Tensor) -> torch.Tensor:
        """Mask structural zeros, then normalise over ``norm_dims``."""
        if self.valid is not None:
            log_weight = log_weight.masked_fill(~self.valid, float("-inf"))
        return log_normalise(log_weight, self.norm_dims)

    def weights(self, normalise: bool = False) -> torch.Tensor:
        """The log-weights to compute with; ``normalise=True`` treats them as logits."""
        return self._project(self.log_weight) if normalise else self.log_weight

    def num_parameters(self) -> int:
        """Number of weights (structural zeros excluded)."""
        if self.valid is not None:
            return int(self.valid.sum())
        return self.log_weight.numel()

    @torch.no_grad()
    def maximize_(self, step_size: float, pseudocount: float) -> None:
        """M-step from the counts in ``log_weight.grad`` (then cleared); mixes with step size
        ``a``: ``W <- (1 - a) W + a W_new``. Without counts the weights stay as they are."""
        counts = self.log_weight.grad
        if counts is None:
            return
        self.log_weight.copy_(mix_log_probabilities(self.log_weight, counts, self.norm_dims,
                                                    step_size, pseudocount, self.valid))
        self.log_weight.grad = None

    @torch.no_grad()
    def renormalise_(self) -> None:
        """After a gradient step on the logits: store them normalised again."""
        self.log_weight.copy_(self._project(self.log_weight))

    def check(self, name: str) -> None:
        """Raise ParameterError if the weights are NaN or not normalised."""
        check_log_probs(self.log_weight, self.norm_dims, name)


def check_log_probs(log_probs: torch.Tensor, dims: tuple[int, ...], name: str) -> None:
    """Log-probabilities must be free of NaN and +inf and sum to 1 over ``dims``."""
    if torch.isnan(log_probs).any() or torch.isposinf(log_probs).any():
        raise ParameterError(f"{name} has NaN or +inf log-probabilities")
    total = torch.logsumexp(log_probs.detach().double(), dim=dims)
    worst = float(total.abs().max()) if total.numel() else 0.0
    if not worst < 1e-4:
        raise ParameterError(f"{name} is not normalised: log of its sums deviates by {worst:.3g}")


@torch.no_grad()
def maximize_layers_(layers: Iterable[SumLayer], step_size: float, pseudocount: float) -> None:
    """``layer.maximize_(step_size, pseudocount)`` for every layer, with the layers whose
    weights have the same trailing shape and normalisation (and no structural zeros)
    updated together: their weights and counts concatenated along the first dim, one M-step,
    the results copied back. The rule is per distribution, so this is the same update in a
    few large operations instead of many small ones (an HCLT has a Hadamard layer per tree
    level)."""
    groups: dict[tuple, list[SumLayer]] = {}
    for layer in layers:
        if layer.log_weight.grad is None:
            continue
        if layer.valid is not None or not all(d < 0 for d in layer.norm_dims):
            layer.maximize_(step_size, pseudocount)
            continue
        key = (tuple(layer.log_weight.shape[1:]), layer.norm_dims, layer.log_weight.dtype)
        groups.setdefault(key, []).append(layer)
    for group in groups.values():
        if len(group) == 1:
            group[0].maximize_(step_size, pseudocount)
            continue
        weights = torch.cat([layer.log_weight for layer in group])
        counts = torch.cat([layer.log_weight.grad for layer in group])
        new = mix_log_probabilities(weights, counts, group[0].norm_dims, step_size,
                                    pseudocount)
        sizes = [len(layer.log_weight) for layer in group]
        for layer, part in zip(group, new.split(sizes), strict=True):
            layer.log_weight.copy_(part)
            layer.log_weight.grad = None
