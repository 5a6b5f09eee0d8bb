"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename, so a
reader (or a resumed run after a crash) only ever sees a complete old file or a complete new one.

Temporary files are named ``.<name>.hmmlvd-XXXXXXXX.tmp``; those a killed process leaves behind
are removed by :func:`remove_temporaries` (``hmmlvd train``/``lvd`` call it on start, holding the
output folder's lock). Files are created with the permissions the umask allows (0666 & ~umask),
like ``open()``'s, not ``mkstemp``'s 0600."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from hmmlvd.core.errors import CheckpointError

TEMP_MARKER = ".hmmlvd-"
_TEMP_NAME = re.compile(r"\..+\.hmmlvd-[a-z0-9_]+\.tmp")


def current_umask() -> int:
    """The process' umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create ``path`` (and its parents) if needed; :class:`CheckpointError` naming the path
    when it, or a parent, is a file, or it cannot be created."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"cannot use {path} as the {what}: it is a file, not a "
                                  "folder")
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        raise CheckpointError(f"cannot create the {what} {path}: {file or exc.filename} is a "
                              "file, not a folder") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot create the {what} {path}: {exc.strerror or exc}"
                              ) from exc
    return path


def check_writable(path: Path, what: str = "folder") -> None:
    """:class:`CheckpointError` unless a file can be created in the folder ``path`` (tried,
    since permission bits do not tell: root, ACLs, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CheckpointError(f"the {what} {path} is not writable: "
                              f"{exc.strerror or exc}") from exc


def remove_temporaries(folder: Path, depth: int = 2) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` that a killed process left in
    ``folder`` and its subfolders down to ``depth`` levels; returns them. Call it only while no
    other process writes there (under the folder's lock)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if depth > 0:
                removed += remove_temporaries(Path(entry.path), depth - 1)
        elif _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:  # gone already, or not ours to remove: leave it
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then atomically move it to ``path``."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # after writing: some writers (safetensors) create the file anew, mode 0600
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_small_json(path: Path, limit: int) -> dict | None:
    """The JSON object in ``path`` if the file has at most ``limit`` bytes; None when it is
    missing, larger (a record that size is damaged, and reading it could exhaust memory),
    unreadable, not JSON or not an object."""
    try:
        if path.stat().st_size > limit:
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None
