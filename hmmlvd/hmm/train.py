"""The EM training loop: epochs of mini-batch (or full-batch) EM under a phase schedule, with a
progress bar, periodic atomic checkpoints, and exact resume.

Checkpoints live in ``out/checkpoints/step-XXXXXXXX/`` (the model files plus
``train_state.json``); ``out/checkpoints/latest`` names the newest complete one and is written
last, so a run killed at any moment resumes from a complete checkpoint. Shuffling is fixed by
(seed, epoch), so a resumed epoch replays exactly the batches an uninterrupted run would.
Every run has a ``run_id`` (kept by a resumed run) recorded in its checkpoints: rotation deletes
only this run's older checkpoints, by step number, never those another run left in ``out``.
SIGINT (Ctrl-C) and SIGTERM (schedulers, ``torchrun``) both stop training after the current
batch with a checkpoint.

Under ``torchrun`` (see :mod:`hmmlvd.distributed`) every rank runs this loop over the same
batches: each computes the counts of its shard of a batch, the counts are summed over ranks and
every rank applies the same M-step. Only rank 0 writes checkpoints and shows progress; the other
ranks wait at a barrier while it writes. The checkpoint state does not depend on the number of
ranks, so a run resumes with any number of them.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hmmlvd import distributed, memory
from hmmlvd.atomic import atomic_write_json, atomic_write_text
from hmmlvd.data.windows import TokenWindows
from hmmlvd.errors import CheckpointError, DataError, HMMLVDError
from hmmlvd.hmm.checkpoint import load_hmm, save_hmm
from hmmlvd.hmm.em import CountAccumulator, ScaledEmission, expected_counts, maximize
from hmmlvd.hmm.model import HMM
from hmmlvd.validate import check_int, check_pseudocount, check_step_size

STATE_FILE = "train_state.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both stop training after a checkpoint


class TrainingInterrupted(HMMLVDError):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a complete mini-batch; the message
    says where the checkpoint is and how to resume; ``signal`` is the signal number (the
    command line exits with 128 + it: 130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signal = int(signum)


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM while training was already stopping: no checkpoint is
    written; ``signal`` is the signal number."""

    def __init__(self, signum: int):
        super().__init__()
        self.signal = int(signum)


@contextmanager
def _signals_request_stop() -> Iterator[list[int]]:
    """While active, a first SIGINT or SIGTERM only sets ``flag[0]`` to its number (training
    stops at the next batch boundary, after a checkpoint); a second one raises
    :class:`StoppedAtOnce`. Outside the main thread signals cannot be caught: nothing changes."""
    flag = [0]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: object) -> None:
        if flag[0]:
            raise StoppedAtOnce(signum)
        flag[0] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Phase:
    """``epochs`` passes over the data with EM step size ``step_size``; ``full_batch``: one
    M-step per epoch from the counts of all windows (e.g. a final ``Phase(1, 1.0, True)``
    replaces the noisy mini-batch estimates by the exact M-step on the whole data)."""

    epochs: int
    step_size: float
    full_batch: bool = False


def two_phase_schedule(epochs: int, step_size: float, phase2_epochs: int = 0,
                       phase2_step_size: float = 0.1, final_full_batch: int = 0) -> list[Phase]:
    """The LVD paper's schedule: ``epochs`` at ``step_size``, then (if ``phase2_epochs``)
    ``phase2_epochs`` at ``phase2_step_size``; then ``final_full_batch`` full-batch epochs
    (classic EM, step size 1)."""
    phases = [Phase(epochs, step_size)]
    if phase2_epochs:
        phases.append(Phase(phase2_epochs, phase2_step_size))
    if final_full_batch:
        phases.append(Phase(final_full_batch, 1.0, full_batch=True))
    return phases


@dataclass
class TrainConfig:
    """How to run EM. ``phases``: e.g. the LVD paper's [Phase(20, a1), Phase(5, a2)].
    ``full_batch``: every epoch is full-batch (one M-step from the counts of all windows; step
    size still mixes), as if each phase said so.
    ``checkpoint_every``: also checkpoint every this many mini-batch steps (0: epoch ends only).
    """

    phases: list[Phase] = field(default_factory=lambda: [Phase(1, 0.5)])
    batch_size: int = 4096
    pseudocount: float = 1e-3
    full_batch: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch size", 1)
        check_int(self.checkpoint_every, "checkpoint_every", 0)
        check_int(self.keep_checkpoints, "keep_checkpoints", 1)
        check_int(self.seed, "seed", 0)
        check_pseudocount(self.pseudocount)
        if not isinstance(self.phases, list | tuple) or not all(
                isinstance(p, Phase) for p in self.phases):
            raise DataError(f"phases must be a list of Phase(epochs, step_size), got "
                            f"{self.phases!r}")
        for p in self.phases:
            check_int(p.epochs, "phase epochs", 0)
            check_step_size(p.step_size)
            if not isinstance(p.full_batch, bool):
                raise DataError(f"Phase.full_batch must be True or False, got {p.full_batch!r}")

    def epoch_plan(self) -> list[float]:
        """The step size of every epoch, in order."""
        return [p.step_size for p in self.phases for _ in range(p.epochs)]

    def full_batch_plan(self) -> list[bool]:
        """Whether each epoch, in order, is full-batch."""
        return [self.full_batch or p.full_batch for p in self.phases for _ in range(p.epochs)]

    @property
    def any_full_batch(self) -> bool:
        return any(self.full_batch_plan())

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        return cls(**{**raw, "phases": [Phase(**p) for p in raw["phases"]]})


@dataclass
class TrainState:
    """Where training stands: ``epoch`` (0-based) and ``batch`` (batches of it done), the
    global ``step`` count, and per-epoch ``history`` rows. ``run_id``: set when training
    starts, kept on resume (rotation deletes only checkpoints of this id); ``trained_on``: what
    the caller records about the data and settings (see :mod:`hmmlvd.provenance`)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    run_id: str = ""
    trained_on: dict = field(default_factory=dict)


def train(hmm: HMM, windows: TokenWindows, config: TrainConfig, out: Path | None = None,
          state: TrainState | None = None, progress: bool = True) -> TrainState:
    """Train ``hmm`` in place by EM on ``windows``; checkpoint into ``out`` if given.
    ``state``: continue from it (from :func:`load_checkpoint`). Returns the final state.
    Ctrl-C or SIGTERM stops after the current mini-batch, saves a checkpoint and raises
    :class:`TrainingInterrupted`. Raises :class:`~hmmlvd.errors.InsufficientMemoryError` before
    the first batch if EM's counts and activations cannot fit next to the model."""
    if windows.length != hmm.length:
        raise DataError(f"windows have length {windows.length}, the model needs T={hmm.length}")
    local_batch = -(-config.batch_size // distributed.world_size())  # this rank's shard
    memory.check_training(hmm.config, local_batch, hmm.device, config.any_full_batch,
                          allocated=True)
    distributed.broadcast_parameters(hmm)  # every rank starts from rank 0's parameters
    state = state or TrainState()
    state.run_id = state.run_id or new_run_id()
    with _signals_request_stop() as stop:
        return _train(hmm, windows, config, out, state, progress, stop)


def new_run_id() -> str:
    """A fresh random id for a training run."""
    return uuid.uuid4().hex


def _train(hmm: HMM, windows: TokenWindows, config: TrainConfig, out: Path | None,
           state: TrainState, progress: bool, stop: list[int]) -> TrainState:
    plan, full_batch_plan = config.epoch_plan(), config.full_batch_plan()
    num_batches = windows.num_batches(config.batch_size)
    while state.epoch < len(plan):
        step_size = plan[state.epoch]
        started = time.perf_counter()
        bar = tqdm(total=num_batches, initial=state.batch, unit="batch",
                   disable=not progress or not distributed.is_main(),
                   desc=f"epoch {state.epoch + 1}/{len(plan)}", dynamic_ncols=True)
        full_batch = full_batch_plan[state.epoch]
        accumulator = CountAccumulator(hmm) if full_batch else None
        # mini-batch M-steps keep the emission table scaled (cost ~ rows touched); it is
        # written out before every checkpoint and at the epoch end
        emission = None if full_batch else ScaledEmission(hmm)
        log_lik, tokens = 0.0, 0
        batches = windows.batches(config.batch_size, shuffle=True,
                                  seed=_epoch_seed(config.seed, state.epoch),
                                  start_batch=0 if full_batch else state.batch)
        for x in batches:
            part = distributed.shard(x)  # this rank's slice of the batch (all of it alone)
            counts = (expected_counts(hmm, part, emission) if len(part)
                      else distributed.zero_counts(hmm))
            if accumulator is not None:
                accumulator.add(counts)  # summed over ranks once, at the epoch end
                log_lik += distributed.all_reduce_sum(counts.log_likelihood)[0]
            else:
                counts = distributed.all_reduce_counts(counts, hmm)
                maximize(hmm, counts, step_size, config.pseudocount, emission)
                state.batch += 1
                state.step += 1
                log_lik += counts.log_likelihood
            tokens += x.numel()
            bar.update(1)
            bar.set_postfix(ll_per_token=f"{log_lik / tokens:.4f}")
            if (accumulator is None and out is not None and config.checkpoint_every
                    and state.step % config.checkpoint_every == 0 and state.batch < num_batches):
                emission.materialise()
                _save(hmm, config, state, out)
            if distributed.any_rank(bool(stop[0])):
                bar.close()
                if emission is not None:
                    emission.materialise()
                _stop(hmm, config, state, out, full_batch=accumulator is not None,
                      signum=stop[0] or signal.SIGINT)
        bar.close()
        if emission is not None:
            emission.materialise()
        if accumulator is not None:
            distributed.all_reduce_accumulator(accumulator)
            maximize(hmm, accumulator.total(), step_size, config.pseudocount)
            state.step += 1
        distributed.broadcast_parameters(hmm)  # resync ranks (CUDA scatter-adds round freely)
        state.history.append({"epoch": state.epoch + 1, "step_size": step_size,
                              "full_batch": full_batch,
                              "train_ll_per_token": log_lik / max(tokens, 1),
                              "seconds": time.perf_counter() - started})
        state.epoch += 1
        state.batch = 0
        if out is not None:
            _save(hmm, config, state, out)
    return state


def _stop(hmm: HMM, config: TrainConfig, state: TrainState, out: Path | None,
          full_batch: bool, signum: int) -> None:
    """Checkpoint where training stands (a full-batch epoch restarts: its model is unchanged)
    and raise :class:`TrainingInterrupted` for signal ``signum`` (on another rank: SIGINT)."""
    if full_batch:
        state.batch = 0
    by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    if out is None:
        raise TrainingInterrupted(f"training interrupted{by} (no output folder: nothing "
                                  "saved)", signum)
    folder = _save(hmm, config, state, out)
    raise TrainingInterrupted(f"training interrupted{by} at epoch {state.epoch + 1}, batch "
                              f"{state.batch}; checkpoint saved in {folder}. Resume with the "
                              "same command plus --resume", signum)


def _save(hmm: HMM, config: TrainConfig, state: TrainState, out: Path) -> Path:
    """:func:`save_checkpoint` on rank 0 while the other ranks wait; returns the folder."""
    folder = out / "checkpoints" / f"step-{state.step:08d}"
    if distributed.is_main():
        folder = save_checkpoint(hmm, config, state, out)
    distributed.barrier()
    return folder


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def save_checkpoint(hmm: HMM, config: TrainConfig, state: TrainState, out: Path) -> Path:
    """Write a complete checkpoint folder, then point ``latest`` at it; keep the newest
    ``config.keep_checkpoints`` of this run (``state.run_id``, given one if it has none), by
    step number. Checkpoints of other runs in ``out`` are never deleted."""
    state.run_id = state.run_id or new_run_id()
    root = out / "checkpoints"
    folder = root / f"step-{state.step:08d}"
    save_hmm(hmm, folder)
    atomic_write_json(folder / STATE_FILE, {"train_config": asdict(config), **asdict(state)})
    atomic_write_text(root / "latest", folder.name + "\n")
    mine = sorted(_checkpoints_of_run(root, state.run_id))
    for _, stale in mine[:-max(config.keep_checkpoints, 1)]:
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def _checkpoints_of_run(root: Path, run_id: str) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root`` written by run ``run_id``
    (its ``train_state.json`` says so); unreadable ones count as another run's."""
    found = []
    for folder in root.glob("step-*"):
        if not re.fullmatch(r"step-[0-9]+", folder.name) or not folder.is_dir():
            continue
        try:
            raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(raw, dict) and raw.get("run_id") == run_id:
            found.append((int(folder.name.removeprefix("step-")), folder))
    return found


def load_checkpoint(out: Path, device: str = "cpu") -> tuple[HMM, TrainConfig, TrainState]:
    """The model, config and state of the newest checkpoint under ``out``."""
    latest = out / "checkpoints" / "latest"
    if not latest.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {latest} does not exist")
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{latest} is unreadable: {exc}") from exc
    if not re.fullmatch(r"step-[0-9]+", name):  # never a path out of the checkpoints folder
        raise CheckpointError(f"{latest} names {name[:80]!r}, not a checkpoint folder "
                              "step-NNNNNNNN of this run")
    folder = out / "checkpoints" / name
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"checkpoint {folder} has no {STATE_FILE}")
    try:
        raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(raw.pop("train_config"))
        state = TrainState(**raw)
        for name in ("epoch", "batch", "step"):
            check_int(getattr(state, name), name, 0)
        if not isinstance(state.run_id, str) or not isinstance(state.trained_on, dict):
            raise TypeError("run_id must be a string and trained_on an object")
    except (ValueError, TypeError, KeyError, AttributeError, DataError) as exc:
        raise CheckpointError(f"{folder / STATE_FILE} is damaged or not from hmmlvd: "
                              f"{type(exc).__name__}: {exc}") from exc
    return load_hmm(folder, device=device), config, state
