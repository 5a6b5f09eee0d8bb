"""A rank of tests/test_distributed_kill.py: ``hmmlvd`` (argv[1:]) under
``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_kill_worker.py``,
where rank ``$KILL_RANK`` sends itself SIGKILL at a fixed point, ``$KILL_AT``:

* ``save:N`` — in its N-th checkpoint write (rank 0 alone writes), after the model files and
  before the checkpoint's state file ``checkpoint.json``: a writer killed mid-write;
* ``batch:N`` — when its training loop takes its N-th batch (counted over every
  ``TokenWindows.batches`` call), while the other rank computes or waits in a collective.

The kill is a real SIGKILL, so the files on disk are exactly those such a kill leaves, and the
surviving rank meets a dead peer as it would after an out-of-memory kill or a lost node."""

from __future__ import annotations

import os
import signal
import sys

import hmmlvd.em.checkpoints as checkpoints
from hmmlvd.cli import main
from hmmlvd.data import TokenWindows


def kill_at(where: str) -> None:
    """Patch this process to SIGKILL itself at ``where`` (``save:N`` or ``batch:N``)."""
    kind, at = where.split(":")
    count, at = [0], int(at)

    def reached() -> None:
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "save":
        write_json = checkpoints.atomic_write_json

        def killing_write(path, *args, **kwargs):
            if path.name == checkpoints.STATE_FILE:
                reached()
            return write_json(path, *args, **kwargs)

        checkpoints.atomic_write_json = killing_write
    elif kind == "batch":
        batches = TokenWindows.batches

        def killing_batches(self, *args, **kwargs):
            for batch in batches(self, *args, **kwargs):
                reached()
                yield batch

        TokenWindows.batches = killing_batches
    else:
        raise ValueError(f"KILL_AT must be save:N or batch:N, got {where!r}")


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["KILL_RANK"]:
        kill_at(os.environ["KILL_AT"])
    sys.exit(main(sys.argv[1:]))
