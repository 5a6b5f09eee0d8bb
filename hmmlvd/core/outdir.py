"""The output folder of a training run (``--out``), made ready before any work: created and
checked to be a writable folder, locked for the whole run (:mod:`hmmlvd.core.lock`), cleared of
the temporary files a killed run left (:func:`hmmlvd.core.atomic.remove_temporaries`), and checked
not to hold a run that the new one would spoil (:func:`check_run_folder`). Under torchrun
rank 0 alone does this and every rank fails together if it fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hmmlvd.core import distributed
from hmmlvd.core.atomic import (
    atomic_write_json,
    check_writable,
    make_folder,
    read_small_json,
    remove_temporaries,
)
from hmmlvd.core.errors import CheckpointError, HMMLVDError
from hmmlvd.core.lock import LOCK_FILE, output_lock

#: The kinds of training run, by the commands that make them.
TEXT_RUN, IMAGE_RUN = "text", "image"
RUN_NAMES = {TEXT_RUN: "a text HMM run (`hmmlvd train` or `hmmlvd lvd`)",
             IMAGE_RUN: "an image circuit run (`hmmlvd image train`)"}
#: The ``model_type`` of each kind's models: in the ``config.json`` of a finished model, and as
#: ``kind`` in the ``checkpoint.json`` of its checkpoints.
MODEL_TYPES = {"hmm": TEXT_RUN, "circuit": IMAGE_RUN, "patch_circuit": IMAGE_RUN}
#: The run-folder format of :mod:`hmmlvd.em.checkpoints` (this module sits below it and cannot
#: import it; a test compares the two): ``checkpoints/latest`` names a folder ``ckpt-N``
#: holding ``checkpoint.json``, or one of the earlier layouts: ``step-N`` (text runs, with
#: ``train_state.json``), ``em-N`` (image runs).
CHECKPOINT_PREFIX, CHECKPOINT_STATE = "ckpt-", "checkpoint.json"
LEGACY_PREFIXES = {"step-": TEXT_RUN, "em-": IMAGE_RUN}
IMAGE_RECORD = "image.json"  # written beside an image model only
TEXT_STATE = "train_state.json"  # an earlier text checkpoint's state: its run_id
RESULTS = "results.json"  # written last by a finished run (text: with its run_id)
SMALL_FILE = 2**20  # bytes: larger pointers, records or configs are not read here
#: Written when a run starts and when it is stopped before its first checkpoint: ``--resume``
#: in a folder with this note and no checkpoint starts the run over, whether it was stopped
#: by a signal or killed outright (SIGKILL, the kernel's out-of-memory killer, a lost node).
STOPPED_EARLY = "stopped-before-checkpoint.json"


@dataclass(frozen=True)
class FolderRun:
    """The run an output folder holds: its kind (:data:`TEXT_RUN` or :data:`IMAGE_RUN`) and
    whether it finished (an unfinished one has checkpoints to resume from)."""

    kind: str
    finished: bool


def _small_json(path: Path) -> dict | None:
    """A JSON object of at most :data:`SMALL_FILE` bytes (else None)."""
    return read_small_json(path, SMALL_FILE)


def run_in_folder(out: Path) -> FolderRun | None:
    """The run ``out`` holds, from its checkpoints (``checkpoints/latest``) or its finished
    model (``image.json``, the ``model_type`` of ``config.json``); None when it holds none
    (or nothing this can tell). A text run keeps its checkpoints when it finishes: it is
    finished when ``results.json`` was written by the run of the newest checkpoint (the same
    ``run_id``; a results.json without one, from an older hmmlvd, counts as finished). An
    image run deletes its checkpoints when it finishes."""
    try:
        pointer = out / "checkpoints" / "latest"
        name = (pointer.read_text(encoding="utf-8").strip()
                if pointer.is_file() and pointer.stat().st_size <= SMALL_FILE else "")
    except (OSError, UnicodeDecodeError):
        name = ""
    kind = next((k for prefix, k in LEGACY_PREFIXES.items() if name.startswith(prefix)), None)
    state = {}
    if name.startswith(CHECKPOINT_PREFIX):
        state = _small_json(out / "checkpoints" / name / CHECKPOINT_STATE) or {}
        kind = state.get("kind")
        kind = MODEL_TYPES.get(kind) if isinstance(kind, str) else None
    elif kind == TEXT_RUN:
        state = _small_json(out / "checkpoints" / name / TEXT_STATE) or {}
    if kind == IMAGE_RUN:
        return FolderRun(IMAGE_RUN, finished=False)
    if kind == TEXT_RUN:
        results = _small_json(out / RESULTS)
        finished = results is not None and results.get("run_id", state.get("run_id")) \
            == state.get("run_id")
        return FolderRun(TEXT_RUN, finished)
    if (out / IMAGE_RECORD).is_file():
        return FolderRun(IMAGE_RUN, finished=True)
    config = _small_json(out / "config.json")
    if config is None:
        return None
    kind = MODEL_TYPES.get(config.get("model_type", "hmm"))  # untyped: an older hmmlvd's HMM
    return None if kind is None else FolderRun(kind, finished=True)


def check_run_folder(out: Path, kind: str, resume: bool) -> None:
    """:class:`CheckpointError` if a new run of ``kind`` in ``out`` (``resume``: with
    ``--resume``) would spoil what ``out`` holds, or cannot continue it: a run of the other
    kind; without ``--resume``, an unfinished run (its checkpoints and ``latest`` would be
    overwritten, and it could no longer be resumed); a finished image model (it would be
    replaced; with ``--resume``, it has no checkpoints left). A finished text model may be
    trained over, or resumed from its checkpoints (kept)."""
    found = run_in_folder(out)
    if found is None:
        return
    if found.kind != kind:
        raise CheckpointError(f"--out {out} holds {RUN_NAMES[found.kind]}, not "
                              f"{RUN_NAMES[kind]}: choose another --out")
    if not found.finished:
        if resume:
            return
        raise CheckpointError(f"--out {out} holds an unfinished run (the checkpoints of a "
                              "stopped run): continue it with --resume, or choose another "
                              "--out")
    if kind == IMAGE_RUN:  # its checkpoints are gone: nothing to resume either
        raise CheckpointError(f"--out {out} holds a trained image model"
                              f"{' (its run finished: nothing to resume)' if resume else ''}: "
                              "choose another --out, or remove that folder first to train "
                              "it anew")


def record_stopped_early(out: Path, doing: str) -> None:
    """Note in ``out`` that its run was stopped while ``doing`` something, before its first
    checkpoint: ``--resume`` then starts it over (:func:`stopped_early`) instead of refusing
    a folder with nothing to resume, so a scheduler that always adds ``--resume`` gets on."""
    atomic_write_json(out / STOPPED_EARLY, {"stopped_while": doing})


def record_started(out: Path) -> None:
    """Note in ``out`` that a run has started there and has no checkpoint yet: if it dies
    before its first checkpoint, ``--resume`` starts it over (:func:`stopped_early`)."""
    atomic_write_json(out / STOPPED_EARLY, {"stopped_while": None})


def stopped_early(out: Path) -> bool:
    """Whether ``out`` holds the note of :func:`record_stopped_early`."""
    return (out / STOPPED_EARLY).is_file()


def clear_stopped_early(out: Path) -> None:
    """Remove the note of :func:`record_stopped_early` (a new run has started in ``out``)."""
    (out / STOPPED_EARLY).unlink(missing_ok=True)


@contextmanager
def output_folder(out: Path, kind: str | None = None, resume: bool = False) -> Iterator[Path]:
    """Prepare and lock ``out`` while the block runs. Raises :class:`CheckpointError` (its
    subclass :class:`~hmmlvd.core.lock.FolderLockedError` when another run holds the folder) before
    anything else happens if ``out`` is a file, lies below one, cannot be created or written,
    or is in use, or (with ``kind``, the kind of run about to start; ``resume``: whether it
    continues one) if it holds a run that this one must not spoil (:func:`check_run_folder`).
    A folder created here is removed again if the block fails before writing anything into
    it."""
    stack = ExitStack()
    error: HMMLVDError | None = None
    removed: list[Path] = []
    created = False
    if distributed.is_main():
        try:
            created = not out.exists()
            make_folder(out, "output folder")
            check_writable(out, "output folder")
            stack.enter_context(output_lock(out))
            if kind is not None:
                check_run_folder(out, kind, resume)
            removed = remove_temporaries(out)
        except HMMLVDError as exc:
            stack.close()
            error = exc
    if distributed.any_rank(error is not None):
        raise error or CheckpointError(f"rank 0 could not prepare the output folder {out}")
    with stack:
        if removed:
            n = len(removed)
            print(f"removed {n} temporary file{'s' if n != 1 else ''} left in {out} by an "
                  "interrupted run")
        try:
            yield out
        except BaseException:
            if created:
                _remove_if_unused(out)
            raise


def _remove_if_unused(out: Path) -> None:
    """Remove ``out`` if it holds nothing but its lock file (a run that failed early)."""
    try:
        if {p.name for p in out.iterdir()} <= {LOCK_FILE}:
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()
    except OSError:
        pass  # another process got there, or it is not ours to remove: leave it
