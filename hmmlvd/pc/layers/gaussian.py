"""Gaussian input distributions for real-valued variables."""

from __future__ import annotations

import math

import torch
from torch import nn

from hmmlvd.core.errors import ParameterError
from hmmlvd.pc.layers.input_layer import InputLayer, check_finite_data, observed_responsibility


class GaussianInput(InputLayer):
    """``mean`` [E, K] and ``log_var`` [E, K] per entry and component.

    The variance is clamped to [min_var, max_var] after every update; the defaults are EiNet's
    (1e-6, 1e-2), meant for data scaled to [0, 1]: pass ``max_var=math.inf`` (or a bound that
    fits your data's scale) for standardised data.
    """

    def __init__(self, entry_var: torch.Tensor, entry_leaf: torch.Tensor, num_leaves: int,
                 num_units: int, min_var: float = 1e-6, max_var: float = 1e-2,
                 generator: torch.Generator | None = None):
        super().__init__(entry_var, entry_leaf, num_leaves, num_units)
        if not 0 < min_var <= max_var:
            raise ParameterError(f"need 0 < min_var <= max_var, got {min_var}, {max_var}")
        self.min_var, self.max_var = min_var, max_var
        shape = (len(entry_var), num_units)
        self.mean = nn.Parameter(torch.rand(shape, generator=generator))
        start_var = min(max_var, 1.0)
        self.log_var = nn.Parameter(torch.full(shape, math.log(start_var)))
        self._stats: list[torch.Tensor] | None = None

    def check_data(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        return check_finite_data(x, observed)

    def _log_var(self) -> torch.Tensor:
        return self.log_var.clamp(math.log(self.min_var), math.log(self.max_var))

    def entry_log_density(self, x: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        values = x.index_select(1, self.entry_var)[:, :, None]  # [B, E, 1]
        log_var = self._log_var()
        return -0.5 * (math.log(2 * math.pi) + log_var
                       + (values - self.mean) ** 2 * torch.exp(-log_var))

    @torch.no_grad()
    def accumulate_(self, x: torch.Tensor, responsibility: torch.Tensor,
                    observed: torch.Tensor | None) -> None:
        responsibility = observed_responsibility(responsibility, observed, self.entry_var)
        values = x.index_select(1, self.entry_var)[:, :, None]
        stats = [responsibility.sum(0), (responsibility * values).sum(0),
                 (responsibility * values**2).sum(0)]
        if self._stats is None:
            self._stats = stats
        else:
            for total, new in zip(self._stats, stats, strict=True):
                total += new

    @torch.no_grad()
    def maximize_(self, step_size: float, pseudocount: float) -> None:
        """Weighted mean and variance; components no sample was assigned to keep their
        parameters (``pseudocount`` is not used: a Gaussian has no uniform prior)."""
        if self._stats is None:
            return
        weight, first, second = self._stats
        used = weight > 1e-12
        safe = weight.clamp_min(1e-12)
        mean = torch.where(used, first / safe, self.mean)
        var = torch.where(used, second / safe - mean**2, self._log_var().exp())
        var = var.clamp(self.min_var, self.max_var)
        self.mean.lerp_(mean, step_size)
        self.log_var.copy_(torch.log(torch.lerp(self._log_var().exp(), var, step_size)))
        self._stats = None

    def discard_counts_(self) -> None:
        self._stats = None

    @torch.no_grad()
    def renormalise_(self) -> None:
        self.log_var.copy_(self._log_var())

    def sample_values(self, entry: torch.Tensor, unit: torch.Tensor,
                      generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
        mean = self.mean.detach()[entry, unit]
        if greedy:
            return mean
        std = torch.exp(0.5 * self._log_var().detach()[entry, unit])
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device)
        return mean + std * noise.to(mean.device)

    def num_parameters(self) -> int:
        return self.mean.numel() + self.log_var.numel()

    def check(self) -> None:
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.log_var).all()):
            raise ParameterError("Gaussian input has NaN or infinite means or variances")
