"""Learning: EM through autograd (full-batch or stochastic mini-batch) and, for comparison,
gradient ascent with Adam.

E-step: one forward pass and ``backward()`` of the summed log-likelihood. The gradient w.r.t.
each sum layer's log-weights is its expected counts (accumulating over batches), and the
gradient w.r.t. the input log-densities gives the responsibilities from which the input layer
collects its sufficient statistics. M-step: every layer normalises its counts (+ pseudocount)
and mixes, ``theta <- (1 - a) * theta + a * theta_new``.

The M-step rule, the probability-zero check, the epoch shuffle and the epoch loop are the ones
every model shares (:mod:`hmmlvd.em`); :func:`run_em` adapts a circuit's E- and M-step to that
loop for :func:`fit_em` (a :class:`Circuit`) and :meth:`PatchCircuit.fit
<hmmlvd.image.patch_circuit.PatchCircuit.fit>`. Settings are the one
:class:`~hmmlvd.em.config.EMConfig` (:data:`CIRCUIT_EM` by default), checked when it is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_array, check_int, check_pseudocount, check_step_size
from hmmlvd.em import (
    Anneal,
    EarlyStopping,
    EMConfig,
    EpochStats,
    Learner,
    Progress,
    check_possible,
    epoch_batches,
    run_epochs,
)
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import LEAF_PRIORS, em_config
from hmmlvd.em.stop import check_stop, stop_requested
from hmmlvd.pc.layers.categorical import CategoricalInput, marginal_histograms
from hmmlvd.pc.layers.sum_layer import maximize_layers_

if TYPE_CHECKING:  # circuit.py imports this module (Circuit.fit); nothing here needs it at run
    from hmmlvd.pc.circuit import Circuit

#: The EM settings circuits use by default: the one :class:`~hmmlvd.em.config.EMConfig` with
#: what images need instead of the text HMM's choice. An image dataset has 10^4-10^5 samples,
#: not 2 * 10^6 windows, and every pixel leaf sees every sample, so batches are smaller
#: (256), steps smaller (0.1) and smoothing larger (0.01), over 5 mini-batch epochs and no
#: full-batch epoch: the settings of the 10,000-image sweep (docs/results.md, "Image bits per
#: dimension"), which its recorded command reproduces. Circuits compute in float32.
CIRCUIT_EM = EMConfig(epochs=5, step_size=0.1, final_full_batch=0, batch_size=256,
                      pseudocount=0.01, dtype="float32")

#: What circuit EM did before a setting existed, for checkpoints that do not record it: no
#: second phase and no full-batch epochs, float32, a checkpoint at epoch ends.
IMPLIED = {"phase2_epochs": 0, "final_full_batch": 0, "dtype": "float32",
           "checkpoint_every": 0}


def check_circuit_config(config: EMConfig) -> EMConfig:
    """``config`` if circuits can run it: :class:`DataError` for a compute dtype other than
    float32 (circuits compute in float32)."""
    if config.dtype not in ("auto", "float32"):
        raise DataError(f"dtype {config.dtype!r}: circuits compute in float32 (give auto or "
                        "float32)")
    return config


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
    check_possible(log_likelihood, "samples", "circuit")
    log_likelihood.sum().backward()
    circuit.input_layer.accumulate_(prepared, evaluation.density.grad, observed)
    return float(log_likelihood.detach().sum())


@torch.no_grad()
def maximize(circuit: Circuit, step_size: float = 1.0, pseudocount: float = 0.0) -> None:
    """M-step of every layer from its accumulated counts (which are then cleared)."""
    check_step_size(step_size)
    check_pseudocount(pseudocount)
    circuit.input_layer.maximize_(step_size, pseudocount)
    maximize_layers_(circuit.sum_layers(), step_size, pseudocount)


def em_step(circuit: Circuit, x: torch.Tensor, step_size: float = 1.0,
            pseudocount: float = 0.0, missing: torch.Tensor | None = None) -> float:
    """One EM step on batch ``x``; returns its mean log-likelihood before the update."""
    check_step_size(step_size)  # before the E-step: a refused step must leave no counts behind
    check_pseudocount(pseudocount)
    total = accumulate_counts(circuit, x, missing)
    maximize(circuit, step_size, pseudocount)
    return total / len(x)


def check_training_data(data: object, num_variables: int,
                        missing: object = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training data as a non-empty [N, D] tensor (and its ``missing`` mask of the same
    shape); DataError otherwise. Values are checked batch by batch by the model."""
    data = as_array(data, "training data")
    if data.dim() != 2 or data.shape[0] == 0:
        raise DataError(f"training data must be a non-empty [N, {num_variables}] "
                        f"array, got shape {tuple(data.shape)}")
    if missing is not None:
        missing = as_array(missing, "missing")
        if missing.shape != data.shape:
            raise DataError(f"missing must have the shape of the data {tuple(data.shape)}, "
                            f"got {tuple(missing.shape)}")
    return data, missing


#: E-step on a batch (x [B, D], missing [B, D] or None) -> summed log-likelihood.
Accumulate = Callable[[torch.Tensor, "torch.Tensor | None"], float]


class _CircuitLearner(Learner):
    """A circuit's side of :func:`hmmlvd.em.loop.run_epochs`: the model keeps its counts (in
    the gradients of its log-weights and its input layer's accumulators)."""

    def __init__(self, accumulate: Accumulate, maximize_step: Callable[[float, float], None],
                 discard: Callable[[], None], data: torch.Tensor,
                 missing: torch.Tensor | None):
        self.accumulate, self.maximize_step, self.discard = accumulate, maximize_step, discard
        self.data, self.missing = data, missing

    def e_step(self, index: np.ndarray) -> tuple[float, float]:
        rows = torch.from_numpy(index)
        return (self.accumulate(self.data[rows],
                                None if self.missing is None else self.missing[rows]),
                len(index))

    def m_step(self, step_size: float, pseudocount: float) -> None:
        self.maximize_step(step_size, pseudocount)


def run_em(accumulate: Accumulate, maximize_step: Callable[[float, float], None],
           discard: Callable[[], None], data: torch.Tensor, config: EMConfig,
           missing: torch.Tensor | None = None, progress: bool = True, desc: str = "EM",
           early: EarlyStopping | None = None,
           checkpoints: EMCheckpoints | None = None) -> list[float]:
    """EM over checked ``data`` [N, D] (and ``missing`` [N, D]) with the one epoch loop
    (:func:`hmmlvd.em.loop.run_epochs`): per batch ``accumulate(x, missing)`` (the E-step,
    adding to the model's counts), then ``maximize_step(step_size, pseudocount)`` after every
    batch, or once per epoch when ``config.full_batch``; then ``config.final_full_batch``
    full-batch epochs at step size 1. A failed batch calls ``discard()`` (no half-collected
    counts stay behind). Returns the mean log-likelihood per sample of each epoch, measured
    during its E-steps (before each batch's update). ``early``: scores held-out data after
    every epoch, may stop a phase, and its best epoch's parameters are restored at the end of
    each phase. ``checkpoints`` (watching the model): saved before the first batch, after
    every epoch and on a stop request (then :class:`~hmmlvd.em.stop.TrainingInterrupted` is
    raised); when it was :meth:`~hmmlvd.em.checkpoints.EMCheckpoints.resume`-d, EM continues from
    its progress and early-stopping state."""
    check_circuit_config(config)
    learner = _CircuitLearner(accumulate, maximize_step, discard, data, missing)
    phases = [config.main_plan(), config.final_plan()]
    start = Progress()  # where EM begins: a resumed checkpoint's progress, or the start
    from_checkpoint = checkpoints is not None and checkpoints.progress is not None
    if checkpoints is not None:
        checkpoints.begin(config, IMPLIED)
    if from_checkpoint:
        start = checkpoints.progress
        checkpoints.restore_early(early)
    history: list[float] = list(start.history)
    num_batches = -(-len(data) // config.batch_size)
    for phase, plan in enumerate(phases):
        if phase < start.phase or not plan:
            continue
        resumed = from_checkpoint and phase == start.phase  # this phase is under way
        state = (replace(start, phase_done=False, history=[]) if resumed
                 else Progress(phase, step=start.step))
        offset = len(history) - state.epoch  # epochs of the earlier phases: seeds go on

        def batches(epoch: int, full_batch: bool, start_batch: int,
                    offset: int = offset) -> list[np.ndarray]:
            return epoch_batches(len(data), config.batch_size, config.seed, offset + epoch,
                                 shuffle=not full_batch, start_batch=start_batch)

        if early is not None and phase and not resumed:
            early.restart_patience()
        if not (resumed and start.phase_done):
            pseudocount = config.step_pseudocount(plan[0][1], len(data))
            stats = _run_phase(learner, plan, pseudocount, batches, num_batches, state,
                               phase, history, progress, desc, early, checkpoints,
                               fresh=not resumed)
            history += [s.mean_log_likelihood for s in stats]
        if early is not None:
            early.restore()
        start = Progress(phase + 1, step=state.step, history=list(history))
    return history


def _run_phase(learner: Learner, plan: list[tuple[float | Anneal, bool]], pseudocount: float,
               batches: Callable[[int, bool, int], list[np.ndarray]], num_batches: int,
               state: Progress, phase: int, history: list[float], progress: bool, desc: str,
               early: EarlyStopping | None, checkpoints: EMCheckpoints | None,
               fresh: bool) -> list[EpochStats]:
    """One phase of :func:`run_em` from ``state``, with the early-stopping and checkpoint
    hooks; ``history``: the epochs finished before this call (all phases); ``fresh``: the
    phase starts here (not from a checkpoint), so its starting point is saved first."""
    if checkpoints is None:  # nothing to save: a stop request ends EM after the batch
        return run_epochs(learner, plan, pseudocount, batches, num_batches, state,
                          progress=progress, desc=desc, after_epoch=early,
                          stop_requested=lambda: bool(stop_requested()),
                          on_stop=lambda loop, full_batch: check_stop(f"running {desc}"))
    done: list[float] = []

    def where(phase_done: bool = False) -> Progress:
        return replace(state, phase=phase, phase_done=phase_done, history=history + done)

    def after_epoch(loop: Progress, stats: EpochStats) -> bool:
        done.append(stats.mean_log_likelihood)
        stop = bool(early(loop, stats)) if early is not None else False
        checkpoints.save(where(stop or loop.epoch >= len(plan)), early)
        return stop

    def on_stop(loop: Progress, full_batch: bool) -> None:
        checkpoints.stop(where(), early, checkpoints.stop_signal())

    if fresh:
        checkpoints.save(where(), early)
    if checkpoints.stop_signal():
        checkpoints.stop(where(), early, checkpoints.stop_signal())
    return run_epochs(learner, plan, pseudocount, batches, num_batches, state,
                      progress=progress, desc=desc,
                      stop_requested=lambda: bool(checkpoints.stop_signal()),
                      on_stop=on_stop, after_epoch=after_epoch)


def early_stopping(model: Circuit, valid: object, config: EMConfig) -> EarlyStopping | None:
    """The :class:`~hmmlvd.em.early.EarlyStopping` of ``model.fit(..., valid=...)``: scores
    ``model.score(valid)`` (checked now, before any training), ``config.patience``; None when
    there is no held-out data (then ``patience`` must be 0)."""
    if valid is None:
        if config.patience:
            raise DataError("patience needs held-out data: pass valid= (e.g. the valid split)")
        return None
    valid, _ = check_training_data(valid, model.num_variables)
    return EarlyStopping(lambda: model.score(valid), lambda: dict(model.named_parameters()),
                         config.patience)


def fit_em(circuit: Circuit, data: torch.Tensor, config: EMConfig | None = None, *,
           epochs: int | None = None, batch_size: int | None = None,
           step_size: float | None = None, pseudocount: float | None = None,
           full_batch: bool | None = None, seed: int | None = None,
           missing: torch.Tensor | None = None, progress: bool = True, desc: str = "EM",
           early: EarlyStopping | None = None,
           checkpoints: EMCheckpoints | None = None) -> list[float]:
    """Train ``circuit`` with EM on ``data`` [N, D] (``missing`` [N, D]: True where a value
    is unobserved); returns the mean training log-likelihood of each epoch (measured during
    its E-steps, i.e. before each batch's update).

    Settings: ``config`` (default :data:`CIRCUIT_EM`); any of ``epochs``, ``batch_size``,
    ``step_size``, ``pseudocount``, ``full_batch``, ``seed`` given by keyword replaces its value,
    so ``fit_em(c, x, epochs=2, step_size=0.5)`` and ``fit_em(c, x, EMConfig(epochs=2,
    step_size=0.5))`` are the same. Everything is checked before the first batch.

    Mini-batch (default): one M-step per shuffled batch. ``full_batch``: counts of all
    batches are summed, then one M-step per epoch. ``data`` may live on the CPU; batches are
    moved to the circuit's device."""
    config = em_config(config, CIRCUIT_EM, epochs=epochs, batch_size=batch_size,
                       step_size=step_size, pseudocount=pseudocount, full_batch=full_batch,
                       seed=seed)
    data, missing = check_training_data(data, circuit.num_variables, missing)
    set_leaf_prior(circuit.input_layer, config.leaf_prior, data, missing)

    def accumulate(x: torch.Tensor, mask: torch.Tensor | None) -> float:
        return accumulate_counts(circuit, x, mask)

    def maximize_step(step: float, pseudo: float) -> None:
        maximize(circuit, step, pseudo)

    return run_em(accumulate, maximize_step, lambda: discard_counts(circuit), data, config,
                  missing, progress, desc, early, checkpoints)


def set_leaf_prior(layer: object, kind: str, data: torch.Tensor,
                   missing: torch.Tensor | None = None) -> None:
    """Spread the pseudocount of a categorical input ``layer`` as ``kind`` says: "uniform", or
    "marginal": by each variable's histogram of values in ``data`` [N, D] (``missing``: not
    counted), add-one smoothed (:func:`~hmmlvd.pc.layers.categorical.marginal_histograms`).
    A sparse leaf (few samples reach it) is then smoothed towards what its variable does take,
    not towards values it never takes. DataError for "marginal" on other inputs."""
    if kind not in LEAF_PRIORS:
        raise DataError(f"leaf_prior must be one of {LEAF_PRIORS}, got {kind!r}")
    if not isinstance(layer, CategoricalInput):
        if kind == "marginal":
            raise DataError(f"leaf_prior 'marginal' needs categorical inputs, not "
                            f"{type(layer).__name__}")
        return
    layer.set_prior_(None if kind == "uniform" else
                     marginal_histograms(data, layer.num_categories, missing))


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
    check_int(epochs, "epochs", 0)
    check_int(batch_size, "batch size", 1)
    data, _ = check_training_data(data, circuit.num_variables)
    if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, float | int) and math.isfinite(learning_rate)
            and learning_rate > 0):
        raise DataError(f"learning rate must be a positive number, got {learning_rate!r}")
    optimiser = torch.optim.Adam(circuit.parameters(), lr=learning_rate)
    history = []
    for epoch in tqdm(range(epochs), desc="Adam", unit="epoch", disable=not progress):
        total = 0.0
        for index in epoch_batches(len(data), batch_size, seed, epoch):
            prepared, observed = circuit.prepare(data[torch.from_numpy(index)])
            log_likelihood = circuit.evaluate(prepared, observed, normalise=True).log_likelihood
            optimiser.zero_grad()
            (-log_likelihood[:, 0].mean()).backward()
            optimiser.step()
            circuit.renormalise_()
            total += float(log_likelihood.detach()[:, 0].sum())
        history.append(total / len(data))
    optimiser.zero_grad(set_to_none=True)
    return history
