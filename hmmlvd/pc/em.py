"""Learning: EM through autograd (full-batch or stochastic mini-batch) and, for comparison,
gradient ascent with Adam.

E-step: one forward pass and ``backward()`` of the summed log-likelihood. The gradient w.r.t.
each sum layer's log-weights is its expected counts (accumulating over batches), and the
gradient w.r.t. the input log-densities gives the responsibilities from which the input layer
collects its sufficient statistics. M-step: every layer normalises its counts (+ pseudocount)
and mixes, ``theta <- (1 - a) * theta + a * theta_new``.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from hmmlvd.errors import DataError
from hmmlvd.pc.circuit import Circuit, as_array
from hmmlvd.validate import check_int, check_pseudocount, check_step_size


def accumulate_counts(circuit: Circuit, x: torch.Tensor,
                      missing: torch.Tensor | None = None) -> float:
    """E-step on one batch ``x`` [B, D] (``missing`` [B, D] True where unobserved): add its
    expected counts to the circuit's accumulators and return the summed log-likelihood.
    With ``root_size`` > 1 the counts are those of root output 0 (the other outputs' root
    weights get none and keep their values).

    Raises DataError if a sample has probability zero (its posterior is undefined)."""
    prepared, observed = circuit.prepare(x, missing)
    evaluation = circuit.evaluate(prepared, observed, track_density=True)
    log_likelihood = evaluation.log_likelihood[:, 0]
    impossible = ~torch.isfinite(log_likelihood)
    if impossible.any():
        raise DataError(f"sample {int(impossible.nonzero()[0])} has probability zero under the "
                        "circuit, so EM cannot assign it; train with a pseudocount > 0")
    log_likelihood.sum().backward()
    circuit.input_layer.accumulate_(prepared, evaluation.density.grad, observed)
    return float(log_likelihood.detach().sum())


@torch.no_grad()
def maximize(circuit: Circuit, step_size: float = 1.0, pseudocount: float = 0.0) -> None:
    """M-step of every layer from its accumulated counts (which are then cleared)."""
    check_step_size(step_size)
    check_pseudocount(pseudocount)
    circuit.input_layer.maximize_(step_size, pseudocount)
    for layer in circuit.sum_layers():
        layer.maximize_(step_size, pseudocount)


def em_step(circuit: Circuit, x: torch.Tensor, step_size: float = 1.0,
            pseudocount: float = 0.0, missing: torch.Tensor | None = None) -> float:
    """One EM step on batch ``x``; returns its mean log-likelihood before the update."""
    check_step_size(step_size)  # before the E-step: a refused step must leave no counts behind
    check_pseudocount(pseudocount)
    total = accumulate_counts(circuit, x, missing)
    maximize(circuit, step_size, pseudocount)
    return total / len(x)


def epoch_batches(num: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
                  ) -> list[torch.Tensor]:
    """Index batches over ``num`` samples for one epoch: shuffled by a generator seeded from
    (``seed``, ``epoch``), so every epoch has its own fixed order; in order if not
    ``shuffle``."""
    if not shuffle:
        return list(torch.arange(num).split(batch_size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(num, generator=generator).split(batch_size))


def _check_fit_args(circuit: Circuit, data: torch.Tensor, epochs: int, batch_size: int
                    ) -> torch.Tensor:
    check_int(epochs, "epochs", 0)
    check_int(batch_size, "batch size", 1)
    data = as_array(data, "training data")
    if data.dim() != 2 or data.shape[0] == 0:
        raise DataError(f"training data must be a non-empty [N, {circuit.num_variables}] "
                        f"array, got shape {tuple(data.shape)}")
    return data


def fit_em(circuit: Circuit, data: torch.Tensor, epochs: int = 1, batch_size: int = 512,
           step_size: float = 1.0, pseudocount: float = 0.0, full_batch: bool = False,
           missing: torch.Tensor | None = None, seed: int = 0,
           progress: bool = True) -> list[float]:
    """Train with EM; returns the mean training log-likelihood of each epoch (measured during
    its E-steps, i.e. before each batch's update).

    Mini-batch (default): one M-step per shuffled batch with step size ``a``. ``full_batch``:
    counts of all batches are summed, then one M-step per epoch (``a = 1`` is classic EM and
    never decreases the likelihood). ``data`` [N, D] may live on the CPU; batches are moved to
    the circuit's device.
    """
    data = _check_fit_args(circuit, data, epochs, batch_size)
    check_step_size(step_size)
    check_pseudocount(pseudocount)
    if missing is not None:
        missing = as_array(missing, "missing")
        if missing.shape != data.shape:
            raise DataError(f"missing must have the shape of the data {tuple(data.shape)}, "
                            f"got {tuple(missing.shape)}")
    history = []
    for epoch in tqdm(range(epochs), desc="EM", unit="epoch", disable=not progress):
        total = 0.0
        try:
            for index in epoch_batches(len(data), batch_size, seed, epoch, not full_batch):
                batch_missing = None if missing is None else missing[index]
                total += accumulate_counts(circuit, data[index], batch_missing)
                if not full_batch:
                    maximize(circuit, step_size, pseudocount)
        except BaseException:
            discard_counts(circuit)  # a failed epoch leaves no half-collected counts behind
            raise
        if full_batch:
            maximize(circuit, step_size, pseudocount)
        history.append(total / len(data))
    return history


def discard_counts(circuit: Circuit) -> None:
    """Drop every accumulated count (after a failed E-step), keeping the parameters."""
    circuit.input_layer.discard_counts_()
    for layer in circuit.sum_layers():
        layer.log_weight.grad = None


def fit_adam(circuit: Circuit, data: torch.Tensor, epochs: int = 1, batch_size: int = 512,
             learning_rate: float = 0.01, seed: int = 0, progress: bool = True) -> list[float]:
    """Maximise the log-likelihood by gradient ascent with Adam, all weights treated as logits
    (normalised inside the forward pass and stored normalised after every step). Returns the
    mean training log-likelihood of each epoch."""
    data = _check_fit_args(circuit, data, epochs, batch_size)
    if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, float | int) and math.isfinite(learning_rate)
            and learning_rate > 0):
        raise DataError(f"learning rate must be a positive number, got {learning_rate!r}")
    optimiser = torch.optim.Adam(circuit.parameters(), lr=learning_rate)
    history = []
    for epoch in tqdm(range(epochs), desc="Adam", unit="epoch", disable=not progress):
        total = 0.0
        for index in epoch_batches(len(data), batch_size, seed, epoch):
            prepared, observed = circuit.prepare(data[index])
            log_likelihood = circuit.evaluate(prepared, observed, normalise=True).log_likelihood
            optimiser.zero_grad()
            (-log_likelihood[:, 0].mean()).backward()
            optimiser.step()
            circuit.renormalise_()
            total += float(log_likelihood.detach()[:, 0].sum())
        history.append(total / len(data))
    optimiser.zero_grad(set_to_none=True)
    return history
