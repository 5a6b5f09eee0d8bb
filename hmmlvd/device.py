"""The one device resolution of the command line, the pipelines and the benchmark scripts."""

from __future__ import annotations

import torch

from hmmlvd.errors import DataError


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) -> cuda when available, else cpu; otherwise cpu, cuda or cuda:N,
    checked (other torch devices, such as mps, meta or xla, are not supported):
    :class:`~hmmlvd.errors.DataError` naming the problem."""
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
