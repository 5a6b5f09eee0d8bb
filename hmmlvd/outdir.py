"""The output folder of a training run (``--out``), made ready before any work: created and
checked to be a writable folder, locked for the whole run (:mod:`hmmlvd.lock`), and cleared of
the temporary files a killed run left (:func:`hmmlvd.atomic.remove_temporaries`). Under
torchrun rank 0 alone does this and every rank fails together if it fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hmmlvd import distributed
from hmmlvd.atomic import check_writable, make_folder, remove_temporaries
from hmmlvd.errors import CheckpointError, HMMLVDError
from hmmlvd.lock import LOCK_FILE, output_lock


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Prepare and lock ``out`` while the block runs. Raises :class:`CheckpointError` (its
    subclass :class:`~hmmlvd.lock.FolderLockedError` when another run holds the folder) before
    anything else happens if ``out`` is a file, lies below one, cannot be created or written,
    or is in use. A folder created here is removed again if the block fails before writing
    anything into it."""
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
