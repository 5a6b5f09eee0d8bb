"""What memory a device has, checked *before* anything large is allocated, so that an absurd
size fails at once with a message saying how much is needed, instead of the process being killed
by the kernel (or hitting CUDA out-of-memory) after the data has been loaded.

:func:`available_bytes` reads what this process can still allocate; :func:`check_parameter_floats`
checks an upper bound on the parameters a saved circuit's config asks for (``INIT_COPIES``
float32 copies alive while they are initialised). The HMM's own cost model (parameters, EM,
sampling) is :mod:`hmmlvd.hmm.memory`, built on these.

Set ``HMMLVD_SKIP_MEMORY_CHECK=1`` to skip the checks (e.g. when swap or unified memory is
meant to absorb the difference).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from hmmlvd.core.errors import ParameterError

SKIP_ENV = "HMMLVD_SKIP_MEMORY_CHECK"
FLOAT32 = 4
INIT_COPIES = 3  # float32 copies of a parameter tensor alive while it is initialised


# ----- what the device has ------------------------------------------------------------------
def available_bytes(device: str | torch.device) -> int | None:
    """Memory this process can still allocate on ``device``, or None when unknown (then no
    check is made). CPU: psutil's available memory if installed, else ``MemAvailable`` from
    /proc/meminfo, capped by a cgroup memory limit if one is set. CUDA: free memory
    (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator holds unused."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError, ValueError):
            return None
        return int(free) + int(cached)
    if device.type == "cpu":
        return _cpu_available()
    return None


def _cpu_available() -> int | None:
    try:
        import psutil

        system = int(psutil.virtual_memory().available)
    except ImportError:
        system = _meminfo_available()
    found = [b for b in (system, _cgroup_available()) if b is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> int | None:
    """limit - (usage - reclaimable page cache) of this container's memory cgroup (v2 or v1),
    or None without a limit."""
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file, stat_key in (
            (root / "memory.max", root / "memory.current", "inactive_file"),
            (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
             "total_inactive_file")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 2**60:
            continue
        used = usage - _stat(limit_file.parent / "memory.stat", stat_key)
        return max(limit - max(used, 0), 0)
    return None


# ----- checks -------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """Bytes as GB (or TB from 1000 GB), one decimal: ``851.9 GB``."""
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    return f"{n / 1e9:.1f} GB"


def skipped() -> bool:
    """Whether ``HMMLVD_SKIP_MEMORY_CHECK`` turns the checks off."""
    return os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def check_parameter_floats(floats: int, sizes: Mapping[str, object]) -> None:
    """:class:`ParameterError` when building ``floats`` float32 parameters (``INIT_COPIES``
    copies of each alive while it is initialised on the CPU) needs more memory than this
    machine has available, naming the ``sizes`` (settings) that ask for them: a saved model's
    config is checked with this before anything of its size is built (a damaged config, or a
    model for a larger machine). ``HMMLVD_SKIP_MEMORY_CHECK`` skips."""
    needed = INIT_COPIES * FLOAT32 * floats
    available = None if skipped() else available_bytes("cpu")
    if available is not None and needed > available:
        named = ", ".join(f"{k}={v!r:.24}" for k, v in sizes.items())
        raise ParameterError(f"its settings ({named}) ask for about {format_bytes(needed)} to "
                             f"build the parameters; this machine has "
                             f"{format_bytes(available)} available: the config is damaged, or "
                             "the model needs a larger machine")
