"""An exclusive lock per output folder, so two runs never write into the same ``--out`` at
once: ``fcntl.flock`` on ``<folder>/.lock``, non-blocking. The lock belongs to the open file,
so the kernel releases it when the process ends, however it ends (kill -9 included); the file
itself stays and holds the id of the last process that took it."""

from __future__ import annotations

import errno
import fcntl
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hmmlvd.core.errors import CheckpointError

LOCK_FILE = ".lock"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # the file system cannot lock


class FolderLockedError(CheckpointError):
    """Another process holds the output folder's lock."""


@contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (``folder`` must exist); yields the lock
    file. Raises :class:`FolderLockedError` at once, naming the folder and the holder's process
    id when known, if another process (or another open of the file) holds it."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CheckpointError(f"cannot create the lock file {path}: {exc.strerror or exc}"
                              ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            by = f"process {holder}" if holder else "another process"
            raise FolderLockedError(
                f"the output folder {folder} is in use by {by} (another hmmlvd run writing "
                "there?): wait for it to finish, or use another --out") from None
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise CheckpointError(f"cannot lock {path}: {exc.strerror or exc}") from exc
            warnings.warn(f"{folder} is on a file system without file locks: nothing stops "
                          "another run from writing there at the same time", stacklevel=3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _read_pid(fd: int) -> int | None:
    """The process id the lock's holder wrote, if readable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None
