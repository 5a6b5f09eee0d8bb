"""The one seeded epoch shuffle: every epoch visits the N training items in its own order, fixed
by (seed, epoch), so a run resumed in the middle of an epoch skips exactly the batches it had
done, whatever the model."""

from __future__ import annotations

import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of ``epoch`` (0-based) of a run seeded with ``seed``."""
    return seed * 1_000_003 + epoch


def permutation(num: int, seed: int) -> np.ndarray:
    """int64 [num]: the shuffle of items 0..num-1 fixed by ``seed`` (numpy's PCG64)."""
    return np.random.default_rng(seed).permutation(num)


def epoch_order(num: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """int64 [num]: the order in which ``epoch`` visits items 0..num-1 (identity if not
    ``shuffle``)."""
    return permutation(num, epoch_seed(seed, epoch)) if shuffle else np.arange(num)


def epoch_batches(num: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  start_batch: int = 0) -> list[np.ndarray]:
    """The index batches (int64, at most ``batch_size`` each) of ``epoch``, from batch
    ``start_batch`` on."""
    order = epoch_order(num, seed, epoch, shuffle)
    return [order[lo:lo + batch_size]
            for lo in range(start_batch * batch_size, num, batch_size)]
