"""The EM training loop: epochs of mini-batch (or full-batch) EM under a phase schedule, with a
progress bar, periodic atomic checkpoints, and exact resume.

Checkpoints are the one run-folder format of :mod:`hmmlvd.em.checkpoints`
(``out/checkpoints/ckpt-NNNNNNNN/``: the model files, ``best/`` and ``checkpoint.json``;
``out/checkpoints/latest`` names the newest complete one and is written last, so a run killed
at any moment resumes from a complete checkpoint). They are written every
``config.checkpoint_every`` M-steps, at every epoch end and when a stop is requested (SIGINT /
SIGTERM: after the current batch). Shuffling is fixed by (seed, epoch), so a resumed epoch
replays exactly the batches an uninterrupted run would. Rotation deletes only this run's
older checkpoints (its ``run_id``), never those another run left in ``out``.

Under ``torchrun`` (see :mod:`hmmlvd.core.distributed`) every rank runs this loop over the same
batches: each computes the counts of its shard of a batch, the counts are summed over ranks and
every rank applies the same M-step. Only rank 0 writes checkpoints and shows progress; the other
ranks wait at a barrier while it writes. The checkpoint state does not depend on the number of
ranks, so a run resumes with any number of them.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hmmlvd.core import distributed
from hmmlvd.core.device import resolve_dtype
from hmmlvd.core.errors import DataError
from hmmlvd.data.windows import TokenWindows
from hmmlvd.em import EarlyStopping, EpochStats, Learner, Progress, epoch_seed, run_epochs
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig, PlanEntry
from hmmlvd.em.stop import (  # noqa: F401  (TrainingInterrupted, StoppedAtOnce: re-exported)
    StoppedAtOnce,
    TrainingInterrupted,
    signals_request_stop,
    stopped_by,
)
from hmmlvd.hmm import memory, parallel
from hmmlvd.hmm.em import (
    CountAccumulator,
    ScaledEmission,
    chunk_windows,
    expected_counts,
    maximize,
)

if TYPE_CHECKING:  # HMM.fit calls this module; no runtime import of the model here
    from hmmlvd.hmm.model import HMM

#: What HMM runs did before a setting existed, for checkpoints that do not record it: the
#: E-step ran in float32.
IMPLIED = {"dtype": "float32"}


def check_hmm_config(config: EMConfig) -> EMConfig:
    """``config`` if the HMM can run it: :class:`DataError` for a setting that only circuits
    have (a marginal leaf prior)."""
    if not isinstance(config, EMConfig):
        raise DataError(f"config must be an EMConfig, got {type(config).__name__}")
    if config.leaf_prior != "uniform":
        raise DataError(f"leaf_prior {config.leaf_prior!r} is for circuits' categorical "
                        "inputs; the HMM's emissions take the uniform pseudocount")
    return config


def train(hmm: HMM, windows: TokenWindows, config: EMConfig, out: Path | None = None,
          progress: bool = True, valid: TokenWindows | None = None,
          checkpoints: EMCheckpoints | None = None) -> Progress:
    """Train ``hmm`` in place by EM on ``windows``; returns the final progress (its
    ``history``: one row per epoch). Checkpoints go into ``checkpoints`` (an
    :class:`~hmmlvd.em.checkpoints.EMCheckpoints`; when it was resumed, e.g. by
    :func:`hmmlvd.hmm.resume.load_checkpoint`, training continues from its progress and
    early-stopping state, and its EM config must be ``config``), else into a new run in
    ``out`` if given. ``valid``: held-out windows scored after every epoch (mean
    log-likelihood per window); the best epoch's parameters end in ``hmm`` and
    ``config.patience`` stops runs of mini-batch epochs early. Ctrl-C or SIGTERM stops after
    the current mini-batch, saves a checkpoint and raises :class:`TrainingInterrupted`.
    Raises :class:`~hmmlvd.core.errors.InsufficientMemoryError` before the first batch if EM's
    counts and activations cannot fit next to the model."""
    check_hmm_config(config)
    if windows.length != hmm.length:
        raise DataError(f"windows have length {windows.length}, the model needs T={hmm.length}")
    if valid is not None and valid.length != hmm.length:  # shorter ones would score prefixes
        raise DataError(f"held-out windows have length {valid.length}, the model needs "
                        f"T={hmm.length}")
    local_batch = -(-config.batch_size // distributed.world_size())  # this rank's shard
    dtype = resolve_dtype(config.dtype, hmm.device)
    memory.check_training(hmm.config, local_batch, hmm.device, config.any_full_batch,
                          allocated=True, dtype=dtype, mini_batch=config.any_mini_batch)
    if config.patience and valid is None:
        raise DataError("patience needs held-out windows: pass valid= (e.g. the valid split)")
    if checkpoints is None and out is not None:
        checkpoints = EMCheckpoints(out)
    if checkpoints is not None:
        checkpoints.begin(config, IMPLIED)  # a resumed run's config must be this one
        checkpoints.watch(hmm)
    parallel.broadcast_parameters(hmm)  # every rank starts from rank 0's parameters
    state = Progress()
    if checkpoints is not None and checkpoints.progress is not None:
        state = checkpoints.progress
    early = None
    if valid is not None:
        early = EarlyStopping(lambda: hmm.score(valid), hmm.parameters, config.patience)
        if checkpoints is not None:
            checkpoints.restore_early(early)
    with signals_request_stop() as stop:
        state = _train(hmm, windows, config, checkpoints, state, progress, stop, dtype, early)
    if early is not None:
        early.restore()
    return state


class _HMMLearner(Learner):
    """The HMM's side of :func:`hmmlvd.em.loop.run_epochs`. Mini-batch epochs keep the
    emission table scaled (:class:`ScaledEmission`: an M-step costs in proportion to the rows
    a batch touched) until :meth:`sync`; full-batch epochs sum the counts of this rank's shards
    (:class:`CountAccumulator`) and reduce them over ranks once, at the M-step."""

    def __init__(self, hmm: HMM, dtype: torch.dtype = torch.float32):
        self.hmm = hmm
        self.dtype = dtype
        self.accumulator: CountAccumulator | None = None
        self.emission: ScaledEmission | None = None
        self.counts = None

    def begin_epoch(self, full_batch: bool) -> None:
        self.accumulator = CountAccumulator(self.hmm) if full_batch else None
        self.emission = None if full_batch else ScaledEmission(self.hmm)

    def e_step(self, x) -> tuple[float, float]:
        part = distributed.shard(x)  # this rank's slice of the batch (all of it alone)
        if self.accumulator is not None:  # chunk by chunk; summed over ranks at the M-step
            log_likelihood = 0.0
            chunk = chunk_windows(self.hmm.num_states, self.hmm.length)
            for piece in part.split(chunk) if len(part) else ():
                counts = expected_counts(self.hmm, piece, None, self.dtype)
                self.accumulator.add(counts)
                log_likelihood += counts.log_likelihood
            return distributed.all_reduce_sum(log_likelihood)[0], x.numel()
        counts = (expected_counts(self.hmm, part, self.emission, self.dtype) if len(part)
                  else parallel.zero_counts(self.hmm))
        self.counts = parallel.all_reduce_counts(counts, self.hmm)
        return self.counts.log_likelihood, x.numel()

    def m_step(self, step_size: float, pseudocount: float) -> None:
        if self.accumulator is not None:
            parallel.all_reduce_accumulator(self.accumulator)
            maximize(self.hmm, self.accumulator.total(), step_size, pseudocount)
            self.accumulator = None
        else:
            maximize(self.hmm, self.counts, step_size, pseudocount, self.emission)
            self.counts = None

    def sync(self) -> None:
        if self.emission is not None:
            self.emission.materialise()

    def end_epoch(self) -> None:
        parallel.broadcast_parameters(self.hmm)  # resync ranks (CUDA scatter-adds round freely)

    def discard(self) -> None:
        self.sync()  # the parameters stay those of the last M-step
        self.accumulator = self.counts = None


def _train(hmm: HMM, windows: TokenWindows, config: EMConfig,
           checkpoints: EMCheckpoints | None, state: Progress, progress: bool, stop: list[int],
           dtype: torch.dtype, early: EarlyStopping | None) -> Progress:
    plan = config.epoch_plan()
    num_batches = windows.num_batches(config.batch_size)
    learner = _HMMLearner(hmm, dtype)

    def batches(epoch: int, full_batch: bool, start_batch: int):
        return windows.batches(config.batch_size, shuffle=True, seed=epoch_seed(config.seed, epoch),
                               start_batch=start_batch)

    def after_step(state: Progress) -> None:
        if checkpoints is not None and config.checkpoint_every \
                and state.step % config.checkpoint_every == 0:
            learner.sync()
            _save(checkpoints, state, early)

    def on_stop(state: Progress, full_batch: bool) -> None:
        _stop(checkpoints, state, stop[0] or signal.SIGINT, early)

    def after_epoch(state: Progress, stats: EpochStats) -> None:
        row = {"epoch": stats.epoch, "step_size": stats.step_size,
               "full_batch": stats.full_batch, "train_ll_per_token": stats.mean_log_likelihood,
               "seconds": stats.seconds, "dtype": str(dtype).removeprefix("torch.")}
        if early is not None:
            out_of_patience = early(state, stats)
            row["valid_ll_per_window"] = early.scores[-1]
            skip_to = next_full_batch(plan, state.epoch)
            if out_of_patience and not stats.full_batch and skip_to is not None:
                early.restore()  # the full-batch epochs start from the best epoch
                state.epoch = skip_to
            elif out_of_patience:
                state.epoch = len(plan)  # nothing after it: training ends here
            if state.epoch < len(plan) and plan[state.epoch][1] and not stats.full_batch:
                early.restart_patience()
        state.history.append(row)
        if checkpoints is not None:
            _save(checkpoints, state, early)

    def pseudocount(full_batch: bool) -> float:
        return config.step_pseudocount(full_batch, len(windows))

    run_epochs(learner, plan, pseudocount, batches, num_batches, state,
               progress=progress and distributed.is_main(), unit="ll_per_token",
               after_step=after_step, stop_requested=lambda: distributed.any_rank(bool(stop[0])),
               on_stop=on_stop, after_epoch=after_epoch)
    return state


def next_full_batch(plan: list[PlanEntry], epoch: int) -> int | None:
    """Index of the first full-batch epoch of ``plan`` at or after ``epoch``, or None."""
    return next((i for i in range(epoch, len(plan)) if plan[i][1]), None)


def _stop(checkpoints: EMCheckpoints | None, state: Progress, signum: int,
          early: EarlyStopping | None = None) -> None:
    """Checkpoint where training stands (a full-batch epoch restarts: its model is unchanged)
    and raise :class:`TrainingInterrupted` for signal ``signum`` (on another rank: SIGINT)."""
    if checkpoints is None:
        raise TrainingInterrupted(f"training interrupted{stopped_by(signum)} (no output "
                                  "folder: nothing saved)", signum)
    folder = _save(checkpoints, state, early)
    raise checkpoints.interrupted(state, folder, signum)


def _save(checkpoints: EMCheckpoints, state: Progress, early: EarlyStopping | None = None
          ) -> Path:
    """:meth:`EMCheckpoints.save <hmmlvd.em.checkpoints.EMCheckpoints.save>` on rank 0 while
    the other ranks wait; returns the folder (on the other ranks: the checkpoints folder)."""
    folder = checkpoints.root
    if distributed.is_main():
        folder = checkpoints.save(state, early)
    distributed.barrier()
    return folder
