"""The one EM epoch loop, shared by HMMs (:func:`hmmlvd.hmm.train.train`), circuits and patch
circuits (:func:`hmmlvd.pc.em.fit_em`).

An epoch is mini-batch or full-batch with a step size a (a *plan*: one ``(a, full_batch)`` per
epoch; a is a number, or an :class:`Anneal` that moves it linearly from step to step).
Mini-batch: for each batch, the E-step then an M-step with step a. Full-batch: the
E-steps of all batches are summed, then one M-step. The model's side is a :class:`Learner`;
the loop owns the order of calls, the resumable position (:class:`Progress`), the progress bar
and the hooks: ``after_step`` (periodic checkpoints), ``stop_requested`` / ``on_stop`` (Ctrl-C
and SIGTERM: stop after the current batch) and ``after_epoch`` (epoch-end checkpoints).

A batch that fails (an exception, or ``KeyboardInterrupt``) calls ``learner.discard()`` first,
so no half-collected counts (or lazily scaled tables) stay behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm


class Learner:
    """A model's side of EM; subclasses give ``e_step``, ``m_step`` and ``discard``, and
    override the no-op hooks they need. The counts live in the learner (or its model) between
    calls. (Any object with these methods will do: the loop only calls them.)"""

    def begin_epoch(self, full_batch: bool) -> None:
        """Prepare the counts of a new epoch (default: nothing)."""

    def e_step(self, batch: Any) -> tuple[float, float]:
        """Expected counts of ``batch``, kept for the next :meth:`m_step` (mini-batch) or added
        to the epoch's sum (full-batch); returns (summed log-likelihood, units) of the batch,
        over every rank (units: what the log-likelihood is reported per, e.g. tokens)."""
        raise NotImplementedError

    def m_step(self, step_size: float, pseudocount: float) -> None:
        """Update the parameters from the counts kept since the last M-step, then drop them."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make the parameters readable as they are, before a checkpoint or a stop (default:
        they always are)."""

    def end_epoch(self) -> None:
        """After the epoch's last M-step, e.g. resynchronise ranks (default: nothing)."""

    def discard(self) -> None:
        """Drop half-collected counts and leave the parameters valid (after a failure)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Anneal:
    """Epoch ``epoch`` of ``epochs`` whose M-steps anneal the step size linearly from ``first``
    (the first step of epoch 0) to ``last`` (the last step of the last epoch): with n batches
    an epoch (1 in a full-batch epoch), step t = epoch * n + b of the T = epochs * n uses
    ``first + (last - first) * t / (T - 1)`` (``first`` when T = 1). Build with
    :func:`linear_anneal`."""

    first: float
    last: float
    epoch: int
    epochs: int

    def at(self, batch: int, num_batches: int) -> float:
        """The step size of batch ``batch`` of this epoch's ``num_batches``."""
        steps = self.epochs * num_batches
        if steps <= 1:
            return self.first
        return self.first + (self.last - self.first) * (self.epoch * num_batches + batch) / (
            steps - 1)


def linear_anneal(first: float, last: float, epochs: int) -> list[Anneal]:
    """The step sizes of ``epochs`` epochs annealed linearly from ``first`` to ``last``
    (one :class:`Anneal` per epoch, for a plan)."""
    return [Anneal(first, last, e, epochs) for e in range(epochs)]


def step_size_at(step_size: float | Anneal, batch: int, num_batches: int) -> float:
    """The step size of a plan entry at batch ``batch`` of ``num_batches``."""
    return step_size.at(batch, num_batches) if isinstance(step_size, Anneal) else step_size


@dataclass
class Progress:
    """Where an EM run stands, the one shape every model's checkpoints record
    (:mod:`hmmlvd.em.checkpoints`): in ``phase`` (0: the schedule's epochs; circuits run their
    final full-batch epochs as phase 1), ``epoch`` epochs of it finished, ``batch`` batches of
    the current (mini-batch) epoch done, ``step`` M-steps done in all; ``phase_done``: the
    phase has ended (early stopping or its last epoch) and its best parameters are still to be
    restored; ``history``: one JSON row per finished epoch, all phases (the trainer's own: the
    HMM a dict per epoch, circuits the epoch's mean log-likelihood); ``epoch_total`` /
    ``epoch_units``: the summed log-likelihood and units of the current epoch's ``batch``
    batches, so that an epoch resumed part-way reports the mean over all its batches."""

    phase: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    phase_done: bool = False
    history: list = field(default_factory=list)
    epoch_total: float = 0.0
    epoch_units: float = 0.0

    @classmethod
    def from_dict(cls, raw: dict) -> Progress:
        """The progress a checkpoint recorded (:func:`dataclasses.asdict`'s output; fields it
        lacks take their defaults): ValueError / TypeError if a field is unknown or of the
        wrong kind."""
        if not isinstance(raw, dict):
            raise TypeError(f"progress must be an object, got {type(raw).__name__}")
        progress = cls(**raw)
        for name in ("phase", "epoch", "batch", "step"):
            value = getattr(progress, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(progress.phase_done, bool):
            raise ValueError(f"phase_done must be true or false, got {progress.phase_done!r}")
        if not isinstance(progress.history, list):
            raise TypeError(f"history must be a list, got {type(progress.history).__name__}")
        progress.epoch_total = float(progress.epoch_total)
        progress.epoch_units = float(progress.epoch_units)
        return progress


@dataclass
class EpochStats:
    """What one epoch reported: its (first) step size and kind, the mean log-likelihood per unit
    measured during its E-steps (before each batch's update), and its wall time."""

    epoch: int
    step_size: float
    full_batch: bool
    mean_log_likelihood: float
    seconds: float


def run_epochs(learner: Learner, plan: Sequence[tuple[float | Anneal, bool]],
               pseudocount: float | Callable[[bool], float],
               batches: Callable[[int, bool, int], Iterable[Any]], num_batches: int,
               state: Progress | None = None, *, progress: bool = True, desc: str = "",
               unit: str = "ll", after_step: Callable[[Progress], None] | None = None,
               stop_requested: Callable[[], bool] | None = None,
               on_stop: Callable[[Progress, bool], None] | None = None,
               after_epoch: Callable[[Progress, EpochStats], bool | None] | None = None
               ) -> list[EpochStats]:
    """Run the epochs of ``plan`` from ``state`` (default: the start) and return their stats.

    ``batches(epoch, full_batch, start_batch)``: the batches of an epoch, from batch
    ``start_batch`` on (a full-batch epoch always restarts at 0: its model is unchanged until
    its end); ``num_batches``: how many an epoch has. ``state`` is updated in place.
    ``stop_requested()`` is asked after every batch; when true, the learner is synced and
    ``on_stop(state, full_batch)`` is called (it should save and raise); if it returns, the
    loop returns. ``after_epoch(state, stats)`` may return True to end the run there (early
    stopping). ``unit`` names the bar's running mean log-likelihood. ``pseudocount``: of every
    M-step, or a function of whether the epoch is full-batch (a prior over the whole data
    adds less per mini-batch M-step than per full-batch one)."""
    state = state or Progress()
    stats: list[EpochStats] = []
    while state.epoch < len(plan):
        step_size, full_batch = plan[state.epoch]
        steps = 1 if full_batch else num_batches  # M-steps in this epoch
        epoch_pseudocount = pseudocount(full_batch) if callable(pseudocount) else pseudocount
        started = time.perf_counter()
        label = f"epoch {state.epoch + 1}/{len(plan)}"
        start = 0 if full_batch else state.batch
        total, units = (state.epoch_total, state.epoch_units) if start else (0.0, 0.0)
        learner.begin_epoch(full_batch)
        with tqdm(total=num_batches, initial=start, unit="batch", disable=not progress,
                  desc=f"{desc} {label}".strip(), dynamic_ncols=True) as bar:
            try:
                for batch in batches(state.epoch, full_batch, start):
                    log_likelihood, size = learner.e_step(batch)
                    total, units = total + log_likelihood, units + size
                    if not full_batch:
                        learner.m_step(step_size_at(step_size, state.batch, steps),
                                       epoch_pseudocount)
                        state.batch += 1
                        state.step += 1
                        state.epoch_total, state.epoch_units = total, units
                    bar.update(1)
                    bar.set_postfix({unit: f"{total / max(units, 1):.4f}"})
                    if not full_batch and after_step is not None and state.batch < num_batches:
                        after_step(state)
                    if stop_requested is not None and stop_requested():
                        learner.sync()
                        if full_batch:
                            state.batch = 0
                            state.epoch_total = state.epoch_units = 0.0
                        if on_stop is not None:
                            on_stop(state, full_batch)
                        return stats
                if full_batch:
                    learner.m_step(step_size_at(step_size, 0, steps), epoch_pseudocount)
                    state.step += 1
            except BaseException:
                learner.discard()
                raise
        learner.sync()
        learner.end_epoch()
        stats.append(EpochStats(state.epoch + 1, step_size_at(step_size, 0, steps), full_batch,
                                total / max(units, 1), time.perf_counter() - started))
        state.epoch += 1
        state.batch = 0
        state.epoch_total = state.epoch_units = 0.0
        if after_epoch is not None and after_epoch(state, stats[-1]):
            break  # the hook asked to stop (e.g. early stopping on held-out data)
    return stats
