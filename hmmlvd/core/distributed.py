"""Process groups for data-parallel runs launched by ``torchrun``: joining and leaving, rank
queries, shards of a batch, and collectives on Python numbers and numpy arrays. The HMM's count
reductions built on them are in :mod:`hmmlvd.hmm.parallel`.

Data-parallel EM: every rank holds the whole model. Each mini-batch is the same globally
shuffled batch on every rank (the shuffle depends only on the seed and the epoch); rank r takes
its contiguous slice (:func:`shard`), computes the expected counts of that slice, and the counts
are summed over ranks (:func:`hmmlvd.hmm.parallel.all_reduce_counts`). Every rank then applies
the same M-step to the same summed counts, so parameters stay identical without sending them.
Because the schedule and the checkpoint state do not depend on the number of ranks, a run can
resume with any number of ranks, and N ranks give the parameters of one process up to float
rounding.

Process group: :func:`init` joins the group torchrun describes in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) with backend NCCL for CUDA
(each rank on ``cuda:LOCAL_RANK``) or gloo for CPU; :func:`teardown` leaves it. Every helper
here is a no-op (or the identity) in a single process, so callers need no special case.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from hmmlvd.core.errors import DataError

#: Seconds a collective may wait for the slowest rank (the others wait while rank 0 alone runs
#: LVD's k-means or writes a checkpoint); override with $HMMLVD_DIST_TIMEOUT.
DEFAULT_TIMEOUT_S = 3600

#: What the backends' errors say when another rank has ended or stopped answering: gloo's
#: closed, reset or broken connection and timed-out receive, NCCL's aborted communicator and
#: watchdog timeout.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "Socket closed", "Timed out waiting", "communicator was aborted",
             "Watchdog caught collective operation timeout")

_owned = False  # whether init() created the process group (teardown destroys only that one)


# ----- process group -------------------------------------------------------------------------
def launched() -> bool:
    """True when started by torchrun (or similar) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True inside an initialised process group of two or more ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process' rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes files, logs and progress bars."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 and return this rank's device:
    ``cuda:LOCAL_RANK`` with backend NCCL when ``device`` is CUDA, else ``device`` with gloo.
    A single process, or a group the caller already initialised, is left as it is."""
    global _owned
    if not launched() or dist.is_initialized():
        return device
    if not dist.is_available():
        raise DataError("started with WORLD_SIZE > 1 but this torch has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = timedelta(seconds=float(os.environ.get("HMMLVD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise DataError(f"under torchrun each rank uses cuda:LOCAL_RANK (here cuda:"
                            f"{local_rank}); pass --device cuda, not {device}")
        if local_rank >= torch.cuda.device_count():
            raise DataError(f"LOCAL_RANK={local_rank} but torch sees only "
                            f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node <= "
                            "the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    _owned = True
    return device


def teardown() -> None:
    """Leave the process group :func:`init` joined (nothing otherwise). The ranks leave
    together (a last barrier: rank 0 may still be evaluating while the others are done), and
    the group's pending work objects are freed before the interpreter shuts down."""
    global _owned
    if _owned and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError as exc:  # another rank has ended: there is no one to wait for
            if lost_peer(exc) is None:
                raise
        finally:
            dist.destroy_process_group()
            gc.collect()
    _owned = False


def lost_peer(exc: BaseException) -> str | None:
    """The words of :data:`PEER_LOST` that ``exc``, a collective's error, says (another rank
    has ended or stopped answering), or None for any other error."""
    if not isinstance(exc, RuntimeError):
        return None
    return next((words for words in PEER_LOST if words in str(exc)), None)


def describe_lost_peer(words: str) -> str:
    """One line for a rank whose collective found another rank gone (``words``: what the
    backend said, from :func:`lost_peer`), with what to do."""
    return (f"rank {rank()} lost contact with the other ranks ({words}): another rank ended "
            "(killed, out of memory, or an error it printed) or cannot be reached. Run the same "
            "command again, plus --resume to continue from the last checkpoint if the output "
            "folder has one")


def barrier() -> None:
    """Wait until every rank gets here (used after rank 0 writes shared files)."""
    if is_distributed():
        dist.barrier()


def print_main(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def _comm_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----- sharding ------------------------------------------------------------------------------
def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[lo, hi) of rank ``rank_``'s contiguous share of n items (sizes differ by at most 1)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return n * r // w, n * (r + 1) // w


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a batch (the whole batch in a single process). Slices
    in rank order concatenate back to the batch, so gathered emission rows keep its order."""
    lo, hi = shard_bounds(len(x))
    return x[lo:hi]


# ----- reductions ----------------------------------------------------------------------------
def all_reduce_sum(*values: float) -> list[float]:
    """Python floats summed over ranks (in float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. one rank got Ctrl-C)."""
    return bool(all_reduce_sum(float(flag))[0] > 0) if is_distributed() else bool(flag)


# ----- broadcasts ----------------------------------------------------------------------------
def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=_comm_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_array(array: np.ndarray | None, shape: tuple[int, ...],
                    dtype: np.dtype) -> np.ndarray:
    """Rank 0's ``array`` (of ``shape`` and ``dtype``; ignored elsewhere) on every rank."""
    if not is_distributed():
        return array
    if is_main():
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(_comm_device())
    else:
        t = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype,
                        device=_comm_device())
    dist.broadcast(t, src=0)
    return t.cpu().numpy()
