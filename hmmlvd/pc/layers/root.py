"""The root sum: ``root_size`` mixtures of the root region's K units (1 for a density)."""

from __future__ import annotations

import torch

from hmmlvd.pc.layers.sum_layer import Picker, SumLayer
from hmmlvd.pc.logspace import log_sum_exp


class RootSum(SumLayer):
    """``log_weight`` [root_size, K], each row normalised: ``p_o(x) = sum_k w[o, k] root[k]``."""

    def __init__(self, root_size: int, num_units: int, generator: torch.Generator | None = None):
        super().__init__((root_size, num_units), (-1,), generator)

    def forward(self, root_values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """[B, K] log-values of the root region -> [B, root_size] log-likelihoods."""
        return log_sum_exp(root_values[:, None, :] + self.weights(normalise), dim=-1)

    def choose_unit(self, root_values: torch.Tensor, output: int, pick: Picker) -> torch.Tensor:
        """[B] root-region units, picked with probability ∝ w[output, k] * root[k]."""
        return pick(self.log_weight.detach()[output] + root_values)
