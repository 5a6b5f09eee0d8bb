"""Stopping training on request, for every model the EM loop trains: SIGINT (Ctrl-C) and
SIGTERM (schedulers, ``torchrun``) both ask training to stop after the current batch, with a
checkpoint; a second one stops at once, without one. The command line exits with 128 + the
signal number (130, 143)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hmmlvd.errors import HMMLVDError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both stop training after a checkpoint


class TrainingInterrupted(HMMLVDError):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a complete mini-batch; the message
    says where the checkpoint is and how to resume; ``signal`` is the signal number (the
    command line exits with 128 + it: 130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signal = int(signum)


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM while training was already stopping: no checkpoint is
    written; ``signal`` is the signal number."""

    def __init__(self, signum: int):
        super().__init__()
        self.signal = int(signum)


@contextmanager
def signals_request_stop() -> Iterator[list[int]]:
    """While active, a first SIGINT or SIGTERM only sets ``flag[0]`` to its number (training
    stops at the next batch boundary, after a checkpoint; a line on stderr says so); a second
    one raises :class:`StoppedAtOnce`. Outside the main thread signals cannot be caught:
    nothing changes."""
    flag = [0]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: object) -> None:
        if flag[0]:
            raise StoppedAtOnce(signum)
        flag[0] = signum
        print(f"\n{signal.Signals(signum).name}: stopping at the next batch boundary, after a "
              "checkpoint (send it again to stop at once, without one)", file=sys.stderr,
              flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stopped_by(signum: int) -> str:
    """" by SIGTERM" (any signal but SIGINT, which needs no words), for messages."""
    return "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
