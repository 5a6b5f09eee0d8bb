"""Input layers: factorised distributions over the variables of the leaf regions.

Leaf region r with scope (v_1, ..., v_m) has K components; component k is the product
``prod_i p_{r, v_i, k}(x_{v_i})``. An *entry* is one (leaf region, variable) pair, so a layer
holds E = (total size of all leaves) univariate distributions per component. Missing
variables contribute log 1 = 0 (that is how marginals are computed).

EM: the gradient of the log-likelihood w.r.t. the entries' log-densities [B, E, K] is the
posterior probability that each component is used (the responsibility); each subclass turns
responsibilities into its sufficient statistics (``accumulate_``) and those into parameters
(``maximize_``).
"""

from __future__ import annotations

import torch
from torch import nn

from hmmlvd.core.errors import DataError


class InputLayer(nn.Module):
    """Base class. ``entry_var`` [E]: the variable of each entry; ``entry_leaf`` [E]: its leaf
    region's index (leaves occupy buffer positions 0..L-1)."""

    def __init__(self, entry_var: torch.Tensor, entry_leaf: torch.Tensor, num_leaves: int,
                 num_units: int):
        super().__init__()
        self.register_buffer("entry_var", entry_var.clone(), persistent=False)
        self.register_buffer("entry_leaf", entry_leaf.clone(), persistent=False)
        self.num_leaves = num_leaves
        self.num_units = num_units
        # entry e is leaf e's only entry (one-variable leaves, as in an HCLT): the leaf
        # values are the entries' log-densities as they are
        self.one_entry_per_leaf = len(entry_leaf) == num_leaves and bool(
            (entry_leaf.cpu() == torch.arange(num_leaves)).all())

    @property
    def num_entries(self) -> int:
        return len(self.entry_var)

    def check_data(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Validate observed values of ``x`` [B, D] and return x in the dtype the layer needs,
        with missing values replaced by a harmless placeholder."""
        raise NotImplementedError

    def entry_log_density(self, x: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """[B, D] checked data -> [B, E, K] log-density of every entry under every component."""
        raise NotImplementedError

    def forward(self, density: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        """Entry log-densities [B, E, K] (missing entries zeroed when ``observed`` [B, D] is
        given) summed into their leaf regions, region-major: [L, B, K]."""
        entries = density.transpose(0, 1)  # [E, B, K]: no copy when stored entry-major
        if observed is not None:
            keep = observed.index_select(1, self.entry_var).T[:, :, None]
            entries = torch.where(keep, entries, torch.zeros_like(entries))
        if self.one_entry_per_leaf:
            return entries.contiguous()
        _, b, k = entries.shape
        return entries.new_zeros(self.num_leaves, b, k).index_add(0, self.entry_leaf, entries)

    def accumulate_(self, x: torch.Tensor, responsibility: torch.Tensor,
                    observed: torch.Tensor | None) -> None:
        """Add the sufficient statistics of a batch (``responsibility`` [B, E, K])."""
        raise NotImplementedError

    def maximize_(self, step_size: float, pseudocount: float) -> None:
        """M-step from the accumulated statistics (then cleared), mixed with step size a."""
        raise NotImplementedError

    def discard_counts_(self) -> None:
        """Drop the accumulated statistics without an M-step."""
        raise NotImplementedError

    def renormalise_(self) -> None:
        """Project the parameters back to valid values after a gradient step."""
        raise NotImplementedError

    def sample_values(self, entry: torch.Tensor, unit: torch.Tensor,
                      generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
        """[M] entries and component units -> [M] values drawn from those components (their
        modes if ``greedy``)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ParameterError if the parameters are invalid."""
        raise NotImplementedError


def observed_responsibility(responsibility: torch.Tensor, observed: torch.Tensor | None,
                            entry_var: torch.Tensor) -> torch.Tensor:
    """Responsibilities [B, E, K] with the entries of unobserved variables zeroed (a missing
    value contributes no statistics); ``observed``: [B, D] mask, None for all observed."""
    if observed is None:
        return responsibility
    mask = observed.index_select(1, entry_var).to(responsibility.dtype)
    return responsibility * mask[:, :, None]


def check_finite_data(x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Real-valued data: observed values must be finite; missing ones become 0."""
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise DataError(f"data must be real numbers, got dtype {x.dtype}")
    x = x.to(torch.get_default_dtype())
    bad = ~torch.isfinite(x) & observed
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise DataError(f"data has a non-finite value at sample {row}, variable {col}")
    return torch.where(observed, x, torch.zeros_like(x))
