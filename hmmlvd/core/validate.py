"""Checks of user-supplied values shared by the public API: integer id arrays and scalar
settings. Each raises :class:`~hmmlvd.core.errors.DataError` naming the value and the problem."""

from __future__ import annotations

import math

import numpy as np
import torch

from hmmlvd.core.errors import DataError

_UNSIGNED = {torch.uint16, torch.uint32, torch.uint64}


def check_integer_dtype(array: torch.Tensor | np.ndarray | np.generic, what: str) -> None:
    """Refuse float, complex, bool and other non-integer arrays of ids."""
    if isinstance(array, torch.Tensor):
        dtype = array.dtype
        ok = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    else:
        dtype = array.dtype
        ok = np.issubdtype(dtype, np.integer)
    if not ok:
        raise DataError(f"{what} must be integer ids, got dtype {dtype}")


def as_id_tensor(x: object, what: str) -> torch.Tensor:
    """Integer ids (tensor, numpy array or nested lists) as an int64 tensor; floats, bools,
    complex numbers, strings, ragged lists and ids beyond int64 are refused."""
    if isinstance(x, np.ndarray | np.generic):
        check_integer_dtype(x, what)
        if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
            raise DataError(f"{what} has ids beyond the int64 range")
        return torch.from_numpy(np.asarray(x, dtype=np.int64))
    if isinstance(x, torch.Tensor):
        if x.dtype in _UNSIGNED:
            wide = x.to(torch.int64)
            if wide.numel() and int(wide.min()) < 0:  # uint64 beyond int64 wrapped
                raise DataError(f"{what} has ids beyond the int64 range")
            return wide
        tensor = x
    else:
        try:
            tensor = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise DataError(f"{what} must be a rectangular array of integer ids ({exc})") from exc
    check_integer_dtype(tensor, what)
    return tensor.to(torch.int64)


def as_array(value: object, what: str, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.as_tensor``, raising DataError (not a bare torch error) for ragged lists,
    strings, None and other things that are not rectangular numeric arrays."""
    try:
        return torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise DataError(f"{what} must be a rectangular numeric array ({exc})") from exc


def check_count(value: object, flag: str, field: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; the DataError names the command-line ``flag`` first
    (what a CLI user typed) and the config ``field`` after it (what a Python caller set)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value < minimum:
        raise DataError(f"{flag} must be >= {minimum}, got {value} ({field})")
    return check_int(value, field, minimum)


#: Seeds lie in [0, 2**63): what torch and numpy generators all accept.
SEED_LIMIT = 2**63


def check_seed(value: object, name: str) -> int:
    """``value`` as a seed in [0, 2**63); an int outside it is refused with that range, a
    non-integer as by :func:`check_int`."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < SEED_LIMIT:
        raise DataError(f"{name} must lie in [0, 2**63), got {value}")
    return check_int(value, name, 0)


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_step_size(value: object) -> float:
    """An EM step size: a finite number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise DataError(f"step size must be a number in (0, 1], got {value!r}")
    if not (math.isfinite(value) and 0 < value <= 1):
        raise DataError(f"step size must lie in (0, 1], got {value}")
    return float(value)


def check_pseudocount(value: object, outcomes: int = 1) -> float:
    """A pseudocount: finite, >= 0, and small enough that ``outcomes`` of them stay finite in
    float32."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise DataError(f"pseudocount must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise DataError(f"pseudocount must be a finite number >= 0, got {value}")
    if value * outcomes > 1e30:
        raise DataError(f"pseudocount {value} is too large: {outcomes} of them overflow float32")
    return float(value)
