"""Stopping training on request, for every model the EM loop trains: SIGINT (Ctrl-C) and
SIGTERM (schedulers, ``torchrun``) both ask training to stop after the current batch, with a
checkpoint; a second one stops at once, without one. The command line exits with 128 + the
signal number (130, 143).

Work before EM's first checkpoint (structure learning, LVD's featuriser, k-means and stages
(a) and (b)) can take many minutes, longer than a scheduler's grace period: its loops call
:func:`check_stop` after every step (a block of mutual information, a batch), which raises
:class:`StoppedBeforeCheckpoint` once a stop was requested. That work is not saved: the run
starts over when run again."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hmmlvd.core.errors import HMMLVDError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both stop training after a checkpoint
#: The flags of the active :func:`signals_request_stop` blocks (innermost last; nested blocks
#: share the outermost's flag), read by :func:`stop_requested`.
_ACTIVE: list[list[int]] = []


class TrainingInterrupted(HMMLVDError):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a complete mini-batch; the message
    says where the checkpoint is and how to resume; ``signal`` is the signal number (the
    command line exits with 128 + it: 130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signal = int(signum)


class StoppedBeforeCheckpoint(TrainingInterrupted):
    """A stop request honoured before EM's first checkpoint (while ``doing`` some preparation,
    e.g. learning a structure): nothing was saved, the run starts over when run again."""

    def __init__(self, doing: str, signum: int):
        super().__init__(f"stopped{stopped_by(signum)} while {doing}, before the first "
                         "checkpoint: nothing was saved. Run the same command again (with or "
                         "without --resume) to start over", signum)
        self.doing = doing


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM while training was already stopping: no checkpoint is
    written; ``signal`` is the signal number."""

    def __init__(self, signum: int):
        super().__init__()
        self.signal = int(signum)


@contextmanager
def signals_request_stop() -> Iterator[list[int]]:
    """While active, a first SIGINT or SIGTERM only sets ``flag[0]`` to its number (training
    stops at the end of the current EM batch, after a checkpoint, or, before EM's first
    checkpoint, at the end of the current step of :func:`check_stop`'s loops, without one; a
    line on stderr says so); a second one raises :class:`StoppedAtOnce`. A block inside
    another shares its flag (a signal between the two is not lost). Outside the main thread
    signals cannot be caught: nothing changes."""
    if _ACTIVE:
        yield _ACTIVE[0]
        return
    flag = [0]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: object) -> None:
        if flag[0]:
            raise StoppedAtOnce(signum)
        flag[0] = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step, usually "
              "within seconds: an EM batch, then a checkpoint; before EM's first checkpoint "
              "(structure learning, LVD's features, k-means, stages a and b) a step of that "
              "work, and nothing is saved. Send it again to stop at once, without a "
              "checkpoint", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_requested() -> int:
    """The number of the signal that asked the active :func:`signals_request_stop` block to
    stop; 0 while none did, or when no block is active."""
    return _ACTIVE[0][0] if _ACTIVE else 0


def check_stop(doing: str) -> None:
    """Raise :class:`StoppedBeforeCheckpoint` (saying the run was ``doing`` this) if a stop was
    requested; long work that is not EM calls it after every step of its loops, so a stop
    request ends it within a step instead of after all of it."""
    signum = stop_requested()
    if signum:
        raise StoppedBeforeCheckpoint(doing, signum)


def stopped_by(signum: int) -> str:
    """" by SIGTERM" (any signal but SIGINT, which needs no words), for messages."""
    return "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
