"""Categorical input distributions (e.g. 256 grey levels, or the words of an HMM), and the
Bernoulli as the two-category case."""

from __future__ import annotations

import torch
from torch import nn

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.em.rule import mix_log_probabilities
from hmmlvd.pc.gumbel import pick_index
from hmmlvd.pc.layers.input_layer import InputLayer, observed_responsibility
from hmmlvd.pc.layers.sum_layer import check_log_probs
from hmmlvd.pc.logspace import exp_shifted, log_normalise, safe_log


class CategoricalInput(InputLayer):
    """``log_prob`` [R, C, K]: log p(x = c | row r, component k), normalised over C; entry e
    uses row ``entry_row[e]`` (R = E and row e for entry e unless :meth:`tie_` shares rows).

    Stored category-major (C before K) so that looking up one observed value for all K
    components reads one contiguous row: a batch's densities are a single ``index_select``.

    The M-step's pseudocount c is spread over the C categories by a *prior* per row: uniform
    (c per category, the default) or, after :meth:`set_prior_`, ``c * C * prior[r]`` (the same
    total mass c * C, e.g. the variable's marginal histogram: smoothing then never moves
    probability to values the variable does not take, such as grey levels of a background
    pixel).
    """

    def __init__(self, entry_var: torch.Tensor, entry_leaf: torch.Tensor, num_leaves: int,
                 num_units: int, num_categories: int,
                 generator: torch.Generator | None = None):
        super().__init__(entry_var, entry_leaf, num_leaves, num_units)
        self.num_categories = num_categories
        raw = torch.rand(len(entry_var), num_categories, num_units, generator=generator) + 0.01
        self.log_prob = nn.Parameter(log_normalise(torch.log(raw), (1,)))
        self.register_buffer("entry_row", torch.arange(len(entry_var)), persistent=False)
        self.prior: torch.Tensor | None = None  # [R, C]: how the pseudocount is spread
        self._counts: torch.Tensor | None = None

    def tie_(self, entry_row: torch.Tensor) -> None:
        """Share parameters: entry e uses row ``entry_row[e]`` [E] of a new ``log_prob``
        [max + 1, C, K], each row initialised from its first entry's distribution (every
        row must be used). EM then pools the counts of the entries sharing a row."""
        rows = int(entry_row.max()) + 1
        if entry_row.shape != self.entry_var.shape or set(entry_row.tolist()) != set(range(rows)):
            raise ParameterError(f"tying needs a row for each of the {self.num_entries} "
                                 f"entries, using every row 0..R-1")
        first = torch.full((rows,), self.num_entries, dtype=torch.long).scatter_reduce(
            0, entry_row.cpu(), torch.arange(self.num_entries), "amin")
        with torch.no_grad():
            self.log_prob = nn.Parameter(self.log_prob[first.to(self.log_prob.device)].clone())
        self.entry_row = entry_row.to(self.entry_var.device).clone()

    def set_prior_(self, variable_prior: torch.Tensor | None) -> None:
        """Spread the pseudocount by ``variable_prior`` [V, C] (one distribution over the C
        categories per variable, e.g. from :func:`marginal_histograms`): row r gets the mean
        of its entries' variables' distributions. None: uniform again."""
        if variable_prior is None:
            self.prior = None
            return
        prior = torch.as_tensor(variable_prior, dtype=self.log_prob.dtype,
                                device=self.log_prob.device)
        variables = int(self.entry_var.max()) + 1 if self.num_entries else 0
        if (prior.dim() != 2 or prior.shape[1] != self.num_categories
                or prior.shape[0] < variables):
            raise ParameterError(f"a prior needs [V >= {variables}, {self.num_categories}] "
                                 f"(a distribution per variable), got {tuple(prior.shape)}")
        if not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()) or not torch.allclose(
                prior.sum(1), torch.ones((), dtype=prior.dtype, device=prior.device),
                atol=1e-4):
            raise ParameterError("a prior must hold finite, non-negative rows summing to 1")
        rows = prior.new_zeros(len(self.log_prob), self.num_categories).index_add_(
            0, self.entry_row, prior.index_select(0, self.entry_var))
        self.prior = rows / rows.sum(1, keepdim=True)

    def check_data(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            if x.dtype == torch.bool and self.num_categories == 2:
                return x.long()
            raise DataError(f"categorical data must be integers, got dtype {x.dtype}")
        x = torch.where(observed, x.long(), torch.zeros((), dtype=torch.long, device=x.device))
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_categories):
            bad = ((x < 0) | (x >= self.num_categories)).nonzero()[0]
            value = int(x[bad[0], bad[1]])
            raise DataError(f"value {value} at sample {int(bad[0])}, variable {int(bad[1])} is "
                            f"out of range 0..{self.num_categories - 1}")
        return x

    def _flat_index(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] values -> [B, E] row indices into log_prob viewed as [R * C, K]."""
        return x.index_select(1, self.entry_var) + self.entry_row * self.num_categories

    def entry_log_density(self, x: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """[B, E, K], stored entry-major (a transposed view of [E, B, K]): the circuit's
        region-major leaves are then this memory as it is, and the responsibilities EM gets
        back have the same layout (see :meth:`accumulate_`)."""
        log_prob = log_normalise(self.log_prob, (1,)) if normalise else self.log_prob
        index = self._flat_index(x).T  # [E, B]
        rows = log_prob.reshape(-1, self.num_units).index_select(0, index.flatten())
        return rows.view(*index.shape, self.num_units).transpose(0, 1)

    def soft_evidence_density(self, log_evidence: torch.Tensor) -> torch.Tensor:
        """Entries whose variable is latent, known only through evidence: ``log_evidence``
        [B, E, C] (log f_e(c), e.g. a sub-circuit's log-likelihood for each value c) ->
        [B, E, K] ``log sum_c p(c | e, k) f_e(c)``. Differentiable in ``log_prob``: after
        ``backward``, :meth:`take_gradient_counts_` collects the expected counts."""
        scaled, shift = exp_shifted(log_evidence)  # [B, E, C]
        theta = self.log_prob.exp().index_select(0, self.entry_row)
        mixed = torch.einsum("bec,eck->bek", scaled, theta)
        return safe_log(mixed) + shift

    @torch.no_grad()
    def take_gradient_counts_(self) -> None:
        """Add ``log_prob.grad`` (the expected counts of a backward pass through
        :meth:`soft_evidence_density`) to the statistics ``maximize_`` uses; clear it."""
        if self.log_prob.grad is None:
            return
        counts = self.log_prob.grad.reshape(-1, self.num_units)
        self._counts = counts.clone() if self._counts is None else self._counts + counts
        self.log_prob.grad = None

    @torch.no_grad()
    def accumulate_(self, x: torch.Tensor, responsibility: torch.Tensor,
                    observed: torch.Tensor | None) -> None:
        responsibility = observed_responsibility(responsibility, observed, self.entry_var)
        if self._counts is None:
            self._counts = torch.zeros_like(self.log_prob).view(-1, self.num_units)
        index = self._flat_index(x)  # [B, E]
        if responsibility.transpose(0, 1).is_contiguous():  # entry-major, as the densities
            index, responsibility = index.T, responsibility.transpose(0, 1)
        self._counts.index_add_(0, index.flatten(), responsibility.reshape(-1, self.num_units))

    @torch.no_grad()
    def maximize_(self, step_size: float, pseudocount: float) -> None:
        if self._counts is None:
            return
        counts = self._counts.view_as(self.log_prob)
        spread: float | torch.Tensor = pseudocount  # per category: uniform
        if self.prior is not None and pseudocount:
            spread = (pseudocount * self.num_categories) * self.prior[:, :, None]  # [R, C, 1]
        self.log_prob.copy_(mix_log_probabilities(self.log_prob, counts, (1,), step_size,
                                                  spread))
        self._counts = None

    def discard_counts_(self) -> None:
        self._counts = None

    @torch.no_grad()
    def renormalise_(self) -> None:
        self.log_prob.copy_(log_normalise(self.log_prob, (1,)))

    def sample_values(self, entry: torch.Tensor, unit: torch.Tensor,
                      generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
        logits = self.log_prob.detach()[self.entry_row[entry], :, unit]  # [M, C]
        return pick_index(logits, generator, greedy)

    def num_parameters(self) -> int:
        return self.log_prob.numel()

    def check(self) -> None:
        check_log_probs(self.log_prob, (1,), "categorical input log_prob")


def marginal_histograms(x: torch.Tensor, num_categories: int,
                        missing: torch.Tensor | None = None,
                        batch_size: int = 4096) -> torch.Tensor:
    """[D, C] each variable's distribution of values in ``x`` [N, D] (integers 0..C-1; the
    entries ``missing`` [N, D] marks are not counted), with add-one smoothing:
    (count + 1) / (observed + C), so no value has probability zero."""
    counts = torch.zeros(x.shape[1], num_categories, dtype=torch.float64)
    offsets = torch.arange(x.shape[1]) * num_categories
    for start in range(0, len(x), batch_size):
        rows = x[start:start + batch_size].long().cpu().clamp(0, num_categories - 1) + offsets
        weight = torch.ones(rows.shape, dtype=torch.float64)
        if missing is not None:
            weight = (~missing[start:start + batch_size].cpu()).double()
        counts.view(-1).index_add_(0, rows.flatten(), weight.flatten())
    return ((counts + 1) / (counts.sum(1, keepdim=True) + num_categories)).float()


class BernoulliInput(CategoricalInput):
    """Binary variables: a categorical with two categories (data 0/1 or bool)."""

    def __init__(self, entry_var: torch.Tensor, entry_leaf: torch.Tensor, num_leaves: int,
                 num_units: int, generator: torch.Generator | None = None):
        super().__init__(entry_var, entry_leaf, num_leaves, num_units, 2, generator)

    @property
    def probability(self) -> torch.Tensor:
        """[E, K] p(x = 1 | entry, component)."""
        return self.log_prob.detach()[self.entry_row, 1].exp()

