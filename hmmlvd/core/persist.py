"""One on-disk format for everything hmmlvd saves: a folder with ``model.safetensors`` (tensors
by name, no pickle) and ``config.json`` (``format_version``, ``model_type`` and the settings
needed to rebuild the object), written atomically, tensors first and the config last, so a
folder that has a config is complete. Caches are folders named by a digest of their inputs
(:func:`cache_key`).

Used by the HMM (:meth:`hmmlvd.HMM.save_pretrained`), circuits and patch circuits, the MAE
patch featuriser, and (for its key) the suffix-embedding cache. Reading checks, in this order,
and raises :class:`~hmmlvd.core.errors.CheckpointError` naming the file and the fix: the folder and
config exist, the config is at most :data:`MAX_CONFIG_BYTES`, is a JSON object of a supported
version and of an expected ``model_type``; the tensor file's header names exactly the expected
tensors with the expected shapes (before any tensor is read), and nothing changed while reading.
:func:`load_model` does all of it for a model: config -> empty model -> tensors -> its checks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from hmmlvd.core.atomic import atomic_write, atomic_write_json, make_folder
from hmmlvd.core.errors import CheckpointError, HMMLVDError, WriteError

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 256 * 2**20  # a config.json larger than this is not read
Model = TypeVar("Model", bound=torch.nn.Module)


def save(directory: str | os.PathLike, tensors: Mapping[str, torch.Tensor], config: Mapping,
         model_type: str, extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``tensors`` and ``config`` into ``directory`` (created if needed; a file there is a
    :class:`CheckpointError`); ``extra(folder)`` writes further files (e.g. ``vocab.txt``)
    before the config. Returns the folder.

    A write that fails (disk full, quota, permission denied; safetensors reports these as a
    ``SafetensorError``, not an OSError) raises :class:`WriteError` naming the folder, and a
    folder this call created is removed again, so no incomplete folder is left behind (files
    already in a folder that existed keep their previous, complete contents: every file is
    written atomically)."""
    existed = Path(directory).is_dir()
    folder = make_folder(directory, "model folder")
    cpu = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with removed_on_failure(folder, remove=not existed):
        atomic_write(folder / TENSORS_FILE, lambda tmp: save_file(cpu, tmp))
        if extra is not None:
            extra(folder)
        atomic_write_json(folder / CONFIG_FILE,
                          {"format_version": FORMAT_VERSION, "model_type": model_type, **config})
    return folder


@contextmanager
def removed_on_failure(folder: Path, remove: bool = True) -> Iterator[Path]:
    """Around writes into ``folder``: if the block fails, ``folder`` is removed (when
    ``remove``: the caller created it, so nothing else was there) and an OS error or
    safetensors I/O error becomes the one-line :class:`WriteError` of :func:`write_failure`;
    any other exception propagates as it is. Every save of hmmlvd (model folders, image and
    text checkpoints) writes through this, so none leaves an incomplete folder behind."""
    try:
        yield folder
    except BaseException as exc:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
        failure = write_failure(exc, folder)
        if failure is not None:
            raise failure from exc
        raise


#: What to do about a failed write, by errno (anything else: make it writable).
WRITE_FIXES = {errno.ENOSPC: "free space on its disk, or save elsewhere, and run again",
               errno.EDQUOT: "free space within your disk quota, or save elsewhere, and run "
                             "again"}


def write_failure(exc: BaseException, folder: Path) -> WriteError | None:
    """The :class:`WriteError` of an OS error (not an hmmlvd error) or a safetensors I/O error
    (``... I/O error: No space left on device (os error 28)``) raised while writing into
    ``folder``; None for any other exception."""
    code: int | None = None
    if isinstance(exc, SafetensorError):
        text = str(exc)
        if "I/O error" not in text and "os error" not in text:
            return None
        found = re.search(r"os error (\d+)", text)
        code = int(found[1]) if found else None
        reason = os.strerror(code) if code else text.rsplit(": ", 1)[-1]
    elif isinstance(exc, OSError) and not isinstance(exc, HMMLVDError):
        code = exc.errno
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.strerror and exc.filename is not None and Path(exc.filename) != folder:
            reason = f"{exc.strerror}: {exc.filename}"  # the file that could not be written
    else:
        return None
    fix = WRITE_FIXES.get(code, "make it writable, or save elsewhere, and run again")
    failure = WriteError(f"cannot save into {folder}: {reason.strip().splitlines()[0]}; {fix}")
    failure.errno = code
    return failure


def save_once(folder: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
              config: Mapping, model_type: str) -> None:
    """Write a cache entry: into a temporary sibling folder, then renamed to ``folder``; if
    another process got there first, theirs is kept (both wrote the same inputs' result)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save(tmp, tensors, config, model_type)
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_config(directory: str | os.PathLike, model_types: str | Collection[str],
                what: str = "model", untyped: str | None = None) -> dict:
    """``directory/config.json`` as a dict, checked as the module docstring says.

    ``model_types``: the accepted ``model_type`` value(s); ``what`` names the object in errors
    ("model", "circuit", "MAE cache", ...); ``untyped``: the type assumed when the config has no
    ``model_type`` (folders written before it was recorded), None to refuse them."""
    directory = Path(directory)
    accepted = {model_types} if isinstance(model_types, str) else set(model_types)
    if not directory.is_dir():
        raise CheckpointError(f"{what} folder {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved hmmlvd {what}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size:,} bytes, larger than the {MAX_CONFIG_BYTES:,} "
                              "a config may have: not read (damaged, or not a config)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise CheckpointError(f"{path} is invalid: its JSON is nested too deeply") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r:.40}; this hmmlvd reads "
                              f"versions up to {FORMAT_VERSION} (upgrade hmmlvd)")
    kind = raw.get("model_type", untyped)
    if not isinstance(kind, str) or kind not in accepted:  # (a list is not hashable)
        names = " or ".join(repr(k) for k in sorted(accepted))
        raise CheckpointError(f"{path} holds a {kind!r:.40}, not a {names}")
    return raw


def saved_type(directory: str | os.PathLike, model_types: Collection[str],
               what: str = "model") -> str:
    """The ``model_type`` of a saved folder, one of ``model_types``."""
    return read_config(directory, model_types, what)["model_type"]


def tensor_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in ``directory/model.safetensors``, from its header
    alone (nothing is allocated)."""
    path = Path(directory) / TENSORS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not a dict (SIM118 does not apply)
            return {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated: {exc}") from exc


def check_shapes(directory: str | os.PathLike, expected: Mapping[str, tuple[int, ...]],
                 source: str = "config.json") -> None:
    """:class:`CheckpointError` unless the tensor file holds exactly ``expected`` (names and
    shapes), as its header says; ``source`` names where the expectation comes from."""
    path = Path(directory) / TENSORS_FILE
    shapes = tensor_shapes(directory)
    if set(shapes) != set(expected):
        raise CheckpointError(f"{path} holds tensors {sorted(shapes)}, expected "
                              f"{sorted(expected)}")
    for name, shape in expected.items():
        if shapes[name] != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {shapes[name]} but {source} "
                                  f"implies {tuple(shape)}")


def read_tensors(directory: str | os.PathLike, expected: Mapping[str, tuple[int, ...]],
                 device: str | torch.device = "cpu", source: str = "config.json"
                 ) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors`` on ``device``, after
    :func:`check_shapes`; :class:`CheckpointError` if the file is unreadable or changed while
    it was read."""
    check_shapes(directory, expected, source)
    path = Path(directory) / TENSORS_FILE
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated: {exc}") from exc
    if {k: tuple(v.shape) for k, v in tensors.items()} != {k: tuple(s)
                                                          for k, s in expected.items()}:
        raise CheckpointError(f"{path} changed while it was being read")
    return tensors


def load_into(module: torch.nn.Module, directory: str | os.PathLike,
              source: str = "config.json") -> None:
    """Copy the saved tensors into ``module``'s parameters (names and shapes must match)."""
    params = dict(module.named_parameters())
    tensors = read_tensors(directory, {k: tuple(p.shape) for k, p in params.items()},
                           source=source)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def load_model(directory: str | os.PathLike, model_type: str,
               build: Callable[[dict], Model], check: Callable[[Model], None] | None = None,
               what: str = "model", device: str | torch.device = "cpu") -> Model:
    """The model that :func:`save` wrote into ``directory`` with ``model_type``, on
    ``device``: :func:`read_config`; ``build(config)`` makes the model the config describes
    (fresh parameters; a ``KeyError``, ``TypeError``, ``ValueError`` or hmmlvd error raised
    there means the config is invalid); :func:`load_into` it; ``check(model)`` (e.g. its
    ``check_parameters``: an hmmlvd error there means the saved values are invalid). Every
    failure is a one-line :class:`CheckpointError` naming the file."""
    raw = read_config(directory, model_type, what)
    path = Path(directory) / CONFIG_FILE
    try:
        model = build(raw)
    except CheckpointError:
        raise
    except KeyError as exc:
        raise CheckpointError(f"{path} is invalid: it lacks the key {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path} is invalid: its JSON is nested too deeply") from exc
    except (TypeError, ValueError, HMMLVDError) as exc:
        raise CheckpointError(f"{path} is invalid: {exc}") from exc
    load_into(model, directory)
    if check is not None:
        try:
            check(model)
        except HMMLVDError as exc:
            raise CheckpointError(f"{Path(directory) / TENSORS_FILE}: {exc}") from exc
    return model.to(device)


def cache_key(inputs: Mapping) -> str:
    """24 hex digits of the SHA-256 of ``inputs`` as canonical JSON (sorted keys): the name of
    the cache folder of a result computed from ``inputs``."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
