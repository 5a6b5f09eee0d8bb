"""The one device resolution of the command line, the pipelines and the benchmark scripts, and
the one rule for the compute dtype (bfloat16 where the device multiplies it natively)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

from hmmlvd.core.errors import DataError


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) -> cuda when available, else cpu; otherwise cpu, cuda or cuda:N,
    checked (other torch devices, such as mps, meta or xla, are not supported):
    :class:`~hmmlvd.core.errors.DataError` naming the problem."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (
            device.type == "cpu" and device.index not in (None, 0)):
        raise DataError(f"--device {name} is not supported: use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name} was asked for but torch sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DataError(f"--device {name}: torch sees only {count} CUDA GPU(s), cuda:0 to "
                        f"cuda:{count - 1}")
    return device


# ----- compute dtype ----------------------------------------------------------------------------
#: Compute dtypes by name; ``auto`` is resolved per device by :func:`resolve_dtype`.
DTYPE_NAMES = ("auto", "float32", "bfloat16")
_FIXED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic (dot products, AMX tiles).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` text (empty when absent)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty elsewhere or unreadable."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU with bf16 support (compute
    capability 8+, no emulation) or a CPU with ``avx512_bf16`` / ``amx_bf16`` (Linux). Without
    them a CPU emulates bf16 matmuls, several times slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)
    return False


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype of compute dtype ``name`` (one of :data:`DTYPE_NAMES`) on ``device``:
    ``auto`` is bfloat16 where :func:`native_bf16` holds (2-3x the float32 matmul rate there),
    else float32. The one rule for the encoder and the HMM's E-step. Raises
    :class:`~hmmlvd.core.errors.DataError` for another name."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in _FIXED_DTYPES:
        raise DataError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return _FIXED_DTYPES[name]
