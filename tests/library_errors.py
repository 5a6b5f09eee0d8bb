"""Helpers of the fuzz tests: call the library and keep its error, check an error's class and
message."""

from __future__ import annotations

from hmmlvd.core.errors import HMMLVDError


def library_call(fn, *args, **kwargs):
    """Run ``fn``; return (result, None), or (None, error) for a library error. Any other
    exception propagates and fails the test with its own traceback."""
    try:
        return fn(*args, **kwargs), None
    except HMMLVDError as exc:
        return None, exc


def assert_error(err: Exception | None, cls: type[HMMLVDError], *fragments: str) -> None:
    """``err`` is a ``cls`` whose message contains one of ``fragments``."""
    assert isinstance(err, cls), f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert any(f in str(err) for f in fragments), f"{str(err)!r} contains none of {fragments}"
