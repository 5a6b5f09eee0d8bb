"""The one run-folder format of every EM run (HMMs, circuits, patch circuits): checkpoints that a
stopped or killed run resumes from exactly.

Layout, under a run's output folder ``out``::

    out/checkpoints/ckpt-NNNNNNNN/        one checkpoint (NNNNNNNN: a serial number, 8+ digits)
        model.safetensors, config.json    the model, as its ``save_pretrained(folder)`` writes it
        ...                               (and any other files it writes, e.g. vocab.txt)
        best/                             the best epoch's parameters so far (early stopping),
                                          in the format of :mod:`hmmlvd.core.persist`
        checkpoint.json                   the progress record, written last
    out/checkpoints/latest                the name of the newest complete checkpoint

``checkpoint.json`` (format :data:`FORMAT`) holds ``format`` (this version number), ``kind``
(the ``model_type`` of the model's ``config.json``: "hmm", "circuit", "patch_circuit"),
``em_config`` (:meth:`EMConfig.to_dict <hmmlvd.em.config.EMConfig.to_dict>`, null before EM
started), ``settings`` (the run's settings, a flat object: a resume with another value is
refused, naming the first that differs as its flag), ``trained_on`` (what the run trains on, a
record of :mod:`hmmlvd.core.provenance`: a resume on other data is refused), ``run_id`` (kept by
a resumed run), ``progress`` (:class:`~hmmlvd.em.loop.Progress`), ``early`` (the JSON part of
:meth:`EarlyStopping.state <hmmlvd.em.early.EarlyStopping.state>`, or null), ``record`` (free
JSON of the caller, e.g. LVD's stage (a) and (b) history) and ``seconds`` (wall time spent,
all runs).

Writing: a new serial folder each time (model, ``best/``, then ``checkpoint.json``, each file
atomically), then ``latest`` (atomically), then rotation: the newest ``keep`` checkpoints of
this ``run_id`` stay, never another run's. A run killed at any moment thus resumes from a
complete checkpoint; a write that fails (disk full) removes the new folder and raises the
one-line :class:`~hmmlvd.core.errors.WriteError`, leaving ``latest`` and the checkpoint it
names as they were.

Older run folders still load and resume: the HMM's ``step-NNNNNNNN/train_state.json`` (its
EM config under ``em_config``, or the earlier ``train_config``; the progress fields, ``history``,
``run_id``, ``trained_on`` and ``early`` at the top level; ``best/`` of type
"hmm-best-parameters") and the circuits' ``em-NNNNNNNN/em_state.json`` (``settings``,
``record``, ``trained_on``, ``progress``, ``early``, ``seconds``). Both count as format 1.
Anything unreadable, or of an unknown or newer format, is a one-line
:class:`~hmmlvd.core.errors.CheckpointError` naming the folder (and the version).

This module knows no model: it saves any object with ``save_pretrained(folder)`` and reads
parameters back into the tensors an :class:`~hmmlvd.em.early.EarlyStopping` holds; the caller
loads the model from the folder :meth:`EMCheckpoints.resume` returns.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hmmlvd.core import persist
from hmmlvd.core.atomic import atomic_write_json, atomic_write_text
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.core.provenance import check_same_training
from hmmlvd.em.config import EMConfig
from hmmlvd.em.early import EarlyStopping
from hmmlvd.em.loop import Progress
from hmmlvd.em.stop import TrainingInterrupted, stopped_by

FORMAT = 2  # the version written; 1: the two earlier layouts (read only)
FOLDER = "checkpoints"
POINTER = "latest"
STATE_FILE = "checkpoint.json"
BEST_FOLDER = "best"
BEST_TYPE = "em_best"  # the model_type of best/'s config.json
NAME = re.compile(r"ckpt-([0-9]{8,})")
#: The earlier layouts: folder name -> its state file.
LEGACY_HMM, LEGACY_CIRCUIT = re.compile(r"step-([0-9]+)"), re.compile(r"em-([0-9]{8,})")
LEGACY_FILES = {"step": "train_state.json", "em": "em_state.json"}
#: best/'s model_type in the earlier HMM layout (the circuits' was already BEST_TYPE)
LEGACY_BEST_TYPES = ("hmm-best-parameters",)
#: The progress fields at the top level of an earlier HMM ``train_state.json``.
LEGACY_HMM_PROGRESS = ("epoch", "batch", "step", "epoch_total", "epoch_units", "history")


def new_run_id() -> str:
    """A fresh random id for a training run."""
    return uuid.uuid4().hex


def state_file(folder: Path) -> Path:
    """The progress record of a checkpoint folder, by the folder's layout."""
    if LEGACY_HMM.fullmatch(folder.name):
        return folder / LEGACY_FILES["step"]
    if LEGACY_CIRCUIT.fullmatch(folder.name):
        return folder / LEGACY_FILES["em"]
    return folder / STATE_FILE


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint folder's name (this layout or an earlier one)."""
    return any(p.fullmatch(name) for p in (NAME, LEGACY_HMM, LEGACY_CIRCUIT))


def latest_folder(out: str | Path) -> Path | None:
    """The checkpoint folder that ``out/checkpoints/latest`` names (checked: a checkpoint
    folder's name, with its progress record); None when there is no ``latest``."""
    pointer = Path(out) / FOLDER / POINTER
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer} is unreadable: {exc}") from exc
    if not is_checkpoint_name(name):  # never a path out of the checkpoints folder
        raise CheckpointError(f"{pointer} names {name[:80]!r}, not a checkpoint folder "
                              "ckpt-NNNNNNNN (or step-/em-NNNNNNNN) of this run")
    folder = pointer.parent / name
    if not state_file(folder).is_file():
        raise CheckpointError(f"checkpoint {folder} has no {state_file(folder).name}")
    return folder


@dataclass
class Saved:
    """What a checkpoint folder records besides the model (see the module docstring);
    ``format``: its format version (1: an earlier layout)."""

    folder: Path
    format: int
    kind: str
    em_config: dict | None
    settings: dict
    trained_on: dict
    run_id: str
    progress: Progress
    early: dict | None
    record: dict = field(default_factory=dict)
    seconds: float = 0.0


def read_checkpoint(folder: Path) -> Saved:
    """The record of checkpoint ``folder``, in any layout: :class:`CheckpointError` (one line
    naming the folder) when it is unreadable, damaged, or of an unknown or newer format."""
    path = state_file(folder)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON object is needed, got {type(raw).__name__}")
        if path.name == STATE_FILE:
            version = raw.get("format")
            if isinstance(version, bool) or not isinstance(version, int) \
                    or not 2 <= version <= FORMAT:
                raise CheckpointError(
                    f"checkpoint {folder} has format {version!r:.40}; this hmmlvd reads "
                    f"formats up to {FORMAT} (upgrade hmmlvd, or start a new run)")
            saved = Saved(folder, version, raw["kind"], raw["em_config"], raw["settings"],
                          raw["trained_on"], raw["run_id"], Progress.from_dict(raw["progress"]),
                          raw["early"], raw["record"], float(raw["seconds"]))
        elif path.name == LEGACY_FILES["step"]:
            saved = _legacy_hmm(folder, raw)
        else:
            saved = Saved(folder, 1, _model_type(folder), None, raw["settings"],
                          raw.get("trained_on", {}), "", Progress.from_dict(raw["progress"]),
                          raw["early"], raw["record"], float(raw.get("seconds", 0.0)))
        if not all(isinstance(v, dict) for v in (saved.settings, saved.trained_on,
                                                 saved.record)) \
                or not isinstance(saved.early, dict | None) \
                or not isinstance(saved.em_config, dict | None) \
                or not isinstance(saved.run_id, str) or not isinstance(saved.kind, str):
            raise TypeError("settings, trained_on, record, early and em_config must be "
                            "objects, run_id and kind strings")
    except CheckpointError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError,
            RecursionError) as exc:
        raise CheckpointError(f"{path} is damaged or not from hmmlvd: "
                              f"{type(exc).__name__}: {exc}") from exc
    return saved


def _legacy_hmm(folder: Path, raw: dict) -> Saved:
    """An earlier HMM ``train_state.json``: ``{"em_config" (or "train_config"): ...,
    "run_id", "trained_on", "early", epoch, batch, step, epoch_total, epoch_units,
    history}``."""
    raw = dict(raw)
    config = raw.pop("em_config") if "em_config" in raw else raw.pop("train_config")
    run_id, trained_on = raw.pop("run_id", ""), raw.pop("trained_on", {})
    early = raw.pop("early", {}) or None  # {}: no early stopping
    unknown = sorted(set(raw) - set(LEGACY_HMM_PROGRESS))
    if unknown:
        raise KeyError(f"unknown fields {unknown}")
    return Saved(folder, 1, "hmm", config, {}, trained_on, run_id, Progress.from_dict(raw),
                 early)


def _model_type(folder: Path) -> str:
    """The ``model_type`` in ``folder/config.json`` ("" when it has none)."""
    try:
        raw = json.loads((folder / persist.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return ""
    kind = raw.get("model_type", "") if isinstance(raw, dict) else ""
    return kind if isinstance(kind, str) else ""


class EMCheckpoints:
    """The checkpoints of one run in ``out`` (see the module docstring).

    ``settings``: what the run was started with (a flat JSON object; :meth:`resume` refuses
    other values; ``defaults``: the value a setting had before it existed, for checkpoints
    written by an older hmmlvd that did not record it); ``trained_on``: what it trains on (a
    record of :mod:`hmmlvd.core.provenance`; :meth:`resume` refuses other data with
    :func:`~hmmlvd.core.provenance.check_same_training`; empty: not checked);
    ``stop_signal()``: the number of a signal that asked training to stop, 0 while none did;
    ``record``: JSON kept with every checkpoint (set it before EM starts). The trainer calls
    :meth:`begin` with its EM config before the first save, :meth:`watch` with the model."""

    def __init__(self, out: str | Path, settings: dict | None = None,
                 stop_signal: Callable[[], int] | None = None, defaults: dict | None = None,
                 trained_on: dict | None = None):
        self.out = Path(out)
        self.root = self.out / FOLDER
        self.settings = dict(settings or {})
        self.defaults = dict(defaults or {})
        self.trained_on = dict(trained_on or {})
        self.stop_signal = stop_signal or (lambda: 0)
        self.record: dict = {}
        self.run_id = ""  # set by the first save, or read back by resume()
        self.keep = 1  # checkpoints of this run kept (begin(): the config's keep_checkpoints)
        self.progress: Progress | None = None  # set by resume(): where to continue
        self.saved: Saved | None = None  # what resume() read
        self._em_config: dict | None = None
        self._early: dict | None = None  # the early-stopping state resume() read
        self._model: Any = None  # the model save() writes
        self._clock = time.perf_counter()
        self.seconds_before = 0.0  # wall time of the earlier runs, up to their last checkpoint

    # ----- reading -------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, None when there is none."""
        return latest_folder(self.out)

    def resume(self) -> Path:
        """Read the newest checkpoint: sets :attr:`progress`, :attr:`record`, :attr:`run_id`
        and :attr:`saved`, keeps the early-stopping state for :meth:`restore_early`, and
        returns the folder to load the model from. :class:`CheckpointError` when there is
        none, it is damaged, or it was written with other settings (naming the first that
        differs) or on other data (its ``trained_on`` record; keys it lacks are not
        checked). The EM config is compared by :meth:`begin`."""
        folder = self.latest()
        if folder is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.out} (no "
                                  f"{FOLDER}/{POINTER}): start without --resume")
        saved = read_checkpoint(folder)
        check_same_settings({**self.defaults, **saved.settings}, self.settings, self.out)
        if self.trained_on:
            check_same_training(saved.trained_on, self.trained_on, self.out)
        else:
            self.trained_on = dict(saved.trained_on)
        self.saved, self.progress, self.record = saved, saved.progress, dict(saved.record)
        self.run_id, self.seconds_before = saved.run_id, saved.seconds
        self._clock = time.perf_counter()
        self._early = saved.early
        return folder

    def saved_config(self, implied: dict | None = None) -> EMConfig | None:
        """The EM config the resumed checkpoint recorded (fields it lacks from ``implied``,
        see :meth:`EMConfig.from_dict <hmmlvd.em.config.EMConfig.from_dict>`); None when it
        records none (an earlier circuit checkpoint: its settings hold it)."""
        if self.saved is None or self.saved.em_config is None:
            return None
        try:
            return EMConfig.from_dict(self.saved.em_config, implied=implied)
        except DataError as exc:
            raise CheckpointError(f"{state_file(self.saved.folder)} is damaged or not from "
                                  f"hmmlvd: {exc}") from exc

    def begin(self, config: EMConfig, implied: dict | None = None) -> None:
        """EM is about to run with ``config``: it is recorded with every checkpoint, its
        ``keep_checkpoints`` sets rotation, and a resumed run's saved config (read with
        ``implied``) must equal it (:class:`CheckpointError` naming the first setting that
        differs)."""
        saved = self.saved_config(implied)
        if saved is not None and saved != config:
            given, then = config.to_dict(), saved.to_dict()
            key = next(k for k in given if given[k] != then.get(k))
            raise CheckpointError(
                f"--resume with different training settings than the checkpoint in "
                f"{self.out}: {_flag(key)} {given[key]!r} now, {then.get(key)!r} then; resume "
                "with the settings the run was started with, or start a new run in another "
                "--out")
        self._em_config = config.to_dict()
        self.keep = config.keep_checkpoints

    def restore_early(self, early: EarlyStopping | None) -> None:
        """Give ``early`` the early-stopping state read by :meth:`resume` (if any), its best
        parameters read from the checkpoint's ``best/`` onto the device of the model's."""
        if early is None or not self._early or self.saved is None:
            return
        folder = self.saved.folder
        try:
            best: dict[str, torch.Tensor] = {}
            if self._early.get("best_epoch"):
                current = early.parameters()
                persist.read_config(folder / BEST_FOLDER, (BEST_TYPE, *LEGACY_BEST_TYPES),
                                    "best-epoch parameters")
                device = next(iter(current.values())).device
                best = persist.read_tensors(folder / BEST_FOLDER,
                                            {k: tuple(t.shape) for k, t in current.items()},
                                            device, source="the model")
            early.load_state(self._early, best)
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, DataError) as exc:
            raise CheckpointError(f"the early-stopping state in {folder} is damaged: "
                                  f"{exc}") from exc
        self._early = None

    # ----- writing -------------------------------------------------------------------------
    def watch(self, model: Any) -> None:
        """The model :meth:`save` writes (anything with ``save_pretrained(folder)``)."""
        self._model = model

    def save(self, progress: Progress, early: EarlyStopping | None) -> Path:
        """Write a complete checkpoint of the watched model and ``progress``, point ``latest``
        at it, then delete this run's older ones beyond :attr:`keep`. Returns its folder. If a
        write fails (disk full: :class:`~hmmlvd.core.errors.WriteError`), the new folder is
        removed and ``latest`` and the checkpoint it names are left as they were."""
        self.run_id = self.run_id or new_run_id()
        serials = [int(m[1]) for p in self.root.glob("ckpt-*") if (m := NAME.fullmatch(p.name))]
        folder = self.root / f"ckpt-{max(serials, default=0) + 1:08d}"
        with persist.removed_on_failure(folder):  # a new serial: nothing else was there
            self._model.save_pretrained(folder)
            early_state = None
            if early is not None:
                early_state, best = early.state()
                if best:
                    persist.save(folder / BEST_FOLDER, best, {}, BEST_TYPE)
            atomic_write_json(folder / STATE_FILE, {
                "format": FORMAT, "kind": _model_type(folder), "em_config": self._em_config,
                "settings": self.settings, "trained_on": self.trained_on,
                "run_id": self.run_id, "progress": asdict(progress), "early": early_state,
                "record": self.record, "seconds": self.seconds()})
        atomic_write_text(self.root / POINTER, folder.name + "\n")
        self._rotate(folder)
        return folder

    def _rotate(self, newest: Path) -> None:
        """Keep the newest :attr:`keep` checkpoints of this run (its ``run_id``, and the folder
        it resumed from; earlier layouts' before this one's, each by number); remove this
        layout's incomplete folders older than ``newest`` (a killed write's: the output
        folder's lock keeps other writers out)."""
        serial = int(NAME.fullmatch(newest.name)[1])
        resumed = None if self.saved is None else self.saved.folder
        mine: list[tuple[tuple[int, int], Path]] = []
        for folder in self.root.iterdir():
            name = NAME.fullmatch(folder.name)
            legacy = LEGACY_HMM.fullmatch(folder.name) or LEGACY_CIRCUIT.fullmatch(folder.name)
            if folder == newest or not folder.is_dir() or (name or legacy) is None:
                continue
            try:
                raw = json.loads(state_file(folder).read_text(encoding="utf-8"))
                run_id = raw.get("run_id") if isinstance(raw, dict) else None
            except FileNotFoundError:
                if name is not None and int(name[1]) < serial:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                continue  # unreadable: counts as another run's
            if run_id == self.run_id or folder == resumed:
                mine.append(((1, int(name[1])) if name else (0, int(legacy[1])), folder))
        for _, stale in sorted(mine)[:max(len(mine) + 1 - max(self.keep, 1), 0)]:
            shutil.rmtree(stale, ignore_errors=True)

    def stop(self, progress: Progress, early: EarlyStopping | None, signum: int) -> None:
        """Save where training stands and raise :class:`TrainingInterrupted` for ``signum``."""
        raise self.interrupted(progress, self.save(progress, early), signum)

    @staticmethod
    def interrupted(progress: Progress, folder: Path, signum: int) -> TrainingInterrupted:
        """The :class:`TrainingInterrupted` of a stop at ``progress``, saved in ``folder``."""
        phase = f"phase {progress.phase + 1}, " if progress.phase else ""
        return TrainingInterrupted(f"training interrupted{stopped_by(signum)} at {phase}epoch "
                                   f"{progress.epoch + 1}, batch {progress.batch}; checkpoint "
                                   f"saved in {folder}. Resume with the same command plus "
                                   "--resume", signum)

    def seconds(self) -> float:
        """Wall time of this run so far, the earlier runs' included."""
        return self.seconds_before + time.perf_counter() - self._clock

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


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_same_settings(saved: dict, given: dict, out: Path) -> None:
    """CheckpointError naming the first setting (as its flag) whose value differs."""
    for key in sorted(set(saved) | set(given)):
        if saved.get(key) != given.get(key):
            raise CheckpointError(
                f"--resume with {_flag(key)} {given.get(key)!r}, but the run in {out} was "
                f"started with {saved.get(key)!r}: resume with the same settings, or start a "
                "new run in another --out")
