"""Checkpoints of circuit EM (a :class:`~hmmlvd.pc.circuit.Circuit` or a patch circuit) that a
stopped run resumes from exactly, as ``hmmlvd image train --resume`` does.

A checkpoint is a folder ``out/checkpoints/em-NNNNNNNN/`` (NNNNNNNN: a serial number) with the
model as ``save_pretrained`` writes it, the best epoch's parameters so far (``best/``, the same
safetensors + JSON format) and ``em_state.json``: where EM stands (:class:`EMProgress`), the
early-stopping scores, the run's settings (a resume with other settings is refused, naming the
flag), what it trains on (``trained_on``: e.g. the training images' digest; a resume on other
data is refused), a free ``record`` (e.g. LVD's stage (a) and (b) history) and the wall time
spent so far. ``out/checkpoints/latest`` names the newest complete one and is written last;
older ones are then deleted. A run killed at any moment thus resumes from a complete
checkpoint.

When they are written (by :func:`hmmlvd.pc.em.run_em`): before the first batch (so work done
before EM, e.g. LVD's stages (a) and (b), is never redone), after every epoch, and when a stop is
requested (SIGINT / SIGTERM: after the current batch, see :mod:`hmmlvd.em.stop`). Shuffles are
fixed by (seed, epoch), so a resumed epoch replays exactly the batches the stopped one had left
and ends with the parameters (and the reported mean log-likelihood) an uninterrupted run would
have.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hmmlvd.core import persist
from hmmlvd.core.atomic import atomic_write_json, atomic_write_text
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.core.provenance import check_same_training
from hmmlvd.em import EarlyStopping
from hmmlvd.em.stop import TrainingInterrupted, stopped_by

STATE_FILE = "em_state.json"
BEST_FOLDER = "best"
FOLDER = "checkpoints"
NAME = re.compile(r"em-[0-9]{8,}")


@dataclass
class EMProgress:
    """Where EM stands: in ``phase`` (0: the mini-batch epochs, 1: the final full-batch
    ones), ``epoch`` epochs of it finished, ``batch`` batches of the current mini-batch epoch
    done, ``step`` M-steps done in all; ``phase_done``: the phase has ended (early stopping or
    its last epoch) and its best parameters are still to be restored; ``history``: the mean
    training log-likelihood of every finished epoch, all phases; ``epoch_total`` /
    ``epoch_units``: the summed log-likelihood and images of the current epoch's ``batch``
    batches (see :class:`~hmmlvd.em.loop.LoopState`)."""

    phase: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    phase_done: bool = False
    history: list[float] = field(default_factory=list)
    epoch_total: float = 0.0
    epoch_units: float = 0.0

    @classmethod
    def from_dict(cls, raw: dict) -> EMProgress:
        progress = cls(**raw)
        for name in ("phase", "epoch", "batch", "step"):
            value = getattr(progress, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(progress.phase_done, bool):
            raise ValueError(f"phase_done must be true or false, got {progress.phase_done!r}")
        progress.history = [float(v) for v in progress.history]
        progress.epoch_total = float(progress.epoch_total)
        progress.epoch_units = float(progress.epoch_units)
        return progress


class EMCheckpoints:
    """The checkpoints of one run in ``out`` (see the module docstring).

    ``settings``: what the run was started with (a flat JSON object; :meth:`resume` refuses
    other values; ``defaults``: the value a setting had before it existed, for checkpoints
    written by an older hmmlvd that did not record it); ``trained_on``: what it trains on (a
    record of :mod:`hmmlvd.core.provenance`, e.g. the training images' digest; :meth:`resume`
    refuses other data with :func:`~hmmlvd.core.provenance.check_same_training`); ``stop_signal()``:
    the number of a signal that asked training to stop, 0 while none did; ``record``: JSON kept
    with every checkpoint (set it before EM starts).
    """

    def __init__(self, out: str | Path, settings: dict,
                 stop_signal: Callable[[], int] | None = None, defaults: dict | None = None,
                 trained_on: dict | None = None):
        self.out = Path(out)
        self.root = self.out / FOLDER
        self.settings = dict(settings)
        self.defaults = dict(defaults or {})
        self.trained_on = dict(trained_on or {})
        self.stop_signal = stop_signal or (lambda: 0)
        self.record: dict = {}
        self.progress: EMProgress | None = None  # set by resume(): where to continue
        self._early: tuple[dict, Path] | None = None  # saved state, its folder
        self._model: Any = None  # the model save() writes (set by run_em)
        self._clock = time.perf_counter()
        self.seconds_before = 0.0  # wall time of the earlier runs, up to their last checkpoint

    # ----- reading -------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, None when there is none."""
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{pointer} is unreadable: {exc}") from exc
        if not NAME.fullmatch(name):  # never a path out of the checkpoints folder
            raise CheckpointError(f"{pointer} names {name[:80]!r}, not a checkpoint folder "
                                  "em-NNNNNNNN")
        return self.root / name

    def resume(self) -> Path:
        """Read the newest checkpoint: sets :attr:`progress` and :attr:`record`, keeps the
        early-stopping state for :meth:`restore_early`, and returns the folder to load the
        model from. :class:`CheckpointError` when there is none, it is damaged, or it was
        written with other settings (naming the first that differs) or on other data (its
        ``trained_on`` record; checkpoints written before it was recorded are not checked)."""
        folder = self.latest()
        if folder is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.out} (no "
                                  f"{FOLDER}/latest): start without --resume")
        path = folder / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            settings, record = raw["settings"], raw["record"]
            progress = EMProgress.from_dict(raw["progress"])
            early = raw["early"]
            seconds = float(raw.get("seconds", 0.0))
            trained_on = raw.get("trained_on", {})
            if not all(isinstance(v, dict) for v in (settings, record, trained_on)):
                raise TypeError("settings, record and trained_on must be objects")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{path} is damaged or not from hmmlvd: "
                                  f"{type(exc).__name__}: {exc}") from exc
        check_same_settings({**self.defaults, **settings}, self.settings, self.out)
        check_same_training(trained_on, self.trained_on, self.out)
        self.progress, self.record, self.seconds_before = progress, record, seconds
        self._clock = time.perf_counter()
        self._early = None if early is None else (early, folder)
        return folder

    def restore_early(self, early: EarlyStopping | None) -> None:
        """Give ``early`` the early-stopping state read by :meth:`resume` (if any)."""
        if early is None or self._early is None:
            return
        saved, folder = self._early
        try:
            best: dict[str, torch.Tensor] = {}
            if saved.get("best_epoch"):
                current = early.parameters()
                device = next(iter(current.values())).device
                best = persist.read_tensors(folder / BEST_FOLDER,
                                            {k: tuple(t.shape) for k, t in current.items()},
                                            device, source="the model")
            early.load_state(saved, best)
        except (ValueError, TypeError, KeyError, AttributeError, DataError) as exc:
            raise CheckpointError(f"the early-stopping state in {folder} is damaged: "
                                  f"{exc}") from exc
        self._early = None

    # ----- writing -------------------------------------------------------------------------
    def watch(self, model: Any) -> None:
        """The model :meth:`save` writes (anything with ``save_pretrained(folder)``)."""
        self._model = model

    def save(self, progress: EMProgress, early: EarlyStopping | None) -> Path:
        """Write a complete checkpoint of the watched model and ``progress``, point ``latest``
        at it, then delete the older ones. Returns its folder. If a write fails (disk full:
        :class:`~hmmlvd.core.errors.WriteError`), the new folder is removed and ``latest`` and the
        checkpoint it names are left as they were, so the run still resumes from there."""
        serials = [int(p.name[3:]) for p in self.root.glob("em-*") if NAME.fullmatch(p.name)]
        folder = self.root / f"em-{max(serials, default=0) + 1:08d}"
        with persist.removed_on_failure(folder):  # a new serial: nothing else was there
            self._model.save_pretrained(folder)
            early_state = None
            if early is not None:
                early_state, best = early.state()
                if best:
                    persist.save(folder / BEST_FOLDER, best, {}, "em_best")
            atomic_write_json(folder / STATE_FILE, {
                "settings": self.settings, "record": self.record, "trained_on": self.trained_on,
                "progress": asdict(progress), "early": early_state,
                "seconds": self.seconds_before + time.perf_counter() - self._clock})
        atomic_write_text(self.root / "latest", folder.name + "\n")
        for stale in self.root.glob("em-*"):
            if stale != folder and NAME.fullmatch(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        return folder

    def stop(self, progress: EMProgress, early: EarlyStopping | None, signum: int) -> None:
        """Save where training stands and raise :class:`TrainingInterrupted` for ``signum``."""
        folder = self.save(progress, early)
        where = (f"phase {progress.phase + 1}, epoch {progress.epoch + 1}, batch "
                 f"{progress.batch}")
        raise TrainingInterrupted(f"training interrupted{stopped_by(signum)} ({where}); "
                                  f"checkpoint saved in {folder}. Resume with the same "
                                  "command plus --resume", signum)

    def remove(self) -> None:
        """Delete the checkpoints (the run is finished and its model saved)."""
        shutil.rmtree(self.root, ignore_errors=True)


def check_resumed(checkpoints: EMCheckpoints | None) -> EMCheckpoints:
    """``checkpoints`` if they were read back (a model to train on from them needs them);
    DataError otherwise."""
    if checkpoints is None or checkpoints.progress is None:
        raise DataError("a resumed model needs the checkpoints it was read from "
                        "(EMCheckpoints.resume())")
    return checkpoints


def check_same_settings(saved: dict, given: dict, out: Path) -> None:
    """CheckpointError naming the first setting (as its flag) whose value differs."""
    for key in sorted(set(saved) | set(given)):
        if saved.get(key) != given.get(key):
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"--resume with {flag} {given.get(key)!r}, but the run in {out} was started "
                f"with {saved.get(key)!r}: resume with the same settings, or start a new run "
                "in another --out")
