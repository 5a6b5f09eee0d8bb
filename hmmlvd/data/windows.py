"""All length-T windows of a token stream (stride 1), as a strided view: no window is copied
until a batch of them is requested."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int
from hmmlvd.data.batches import permutation


class TokenWindows:
    """Windows ``stream[s : s+T]`` for every start ``s`` = 0, stride, 2*stride, ... (or a
    subset of those starts).

    ``stream``: int token ids [N]. ``stride``: 1 (default) gives every length-T subsequence.
    ``max_windows``: keep a seeded random subset of this many windows (sorted), for small runs.
    Indexing returns an int64 tensor [B, T].
    """

    def __init__(self, stream: np.ndarray, length: int, max_windows: int | None = None,
                 seed: int = 0, stride: int = 1):
        try:
            stream = np.asarray(stream)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"token stream must be a 1-D integer array ({exc})") from exc
        if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
            raise DataError(f"token stream must be a 1-D integer array, got shape {stream.shape} "
                            f"and dtype {stream.dtype}")
        int32 = np.iinfo(np.int32)
        if stream.size and (stream.min() < 0 or stream.max() > int32.max):
            raise DataError(f"token ids must lie in [0, {int32.max}], got "
                            f"[{stream.min()}, {stream.max()}]")
        length = check_int(length, "window length", 1)
        stride = check_int(stride, "window stride", 1)
        if len(stream) < length:
            raise DataError(f"token stream has {len(stream)} tokens, fewer than one window of "
                            f"{length}")
        self.stream = stream.astype(np.int32, copy=False)
        self.length = length
        all_windows = np.lib.stride_tricks.sliding_window_view(self.stream, length)  # [N-T+1, T]
        self.view = all_windows[::stride]
        self.starts: np.ndarray | None = None
        if max_windows is not None:
            if not isinstance(max_windows, bool) and max_windows == 0:
                raise DataError("max_windows is 0, which leaves no windows to train on; leave it "
                                "out (None) to use every window")
            max_windows = check_int(max_windows, "max_windows", 1)
            if max_windows < len(self.view):
                rng = np.random.default_rng(seed)
                self.starts = np.sort(rng.choice(len(self.view), size=max_windows, replace=False))

    @classmethod
    def from_rows(cls, rows: np.ndarray | torch.Tensor) -> TokenWindows:
        """Windows given directly as the rows of an [N, T] integer array (N >= 1; ids in
        [0, 2**31)), e.g. to train on a tensor of windows; batches and shuffling work as for
        windows of a stream. ``stream`` is then the rows laid end to end."""
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        try:
            rows = np.asarray(rows)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"windows must be an [N, T] integer array ({exc})") from exc
        if rows.ndim != 2 or not rows.size or not np.issubdtype(rows.dtype, np.integer):
            raise DataError(f"windows must be a non-empty [N, T] integer array, got shape "
                            f"{rows.shape} and dtype {rows.dtype}")
        int32 = np.iinfo(np.int32)
        if rows.min() < 0 or rows.max() > int32.max:
            raise DataError(f"token ids must lie in [0, {int32.max}], got "
                            f"[{rows.min()}, {rows.max()}]")
        windows = cls.__new__(cls)
        windows.view = np.ascontiguousarray(rows, dtype=np.int32)
        windows.stream = windows.view.reshape(-1)
        windows.length = rows.shape[1]
        windows.starts = None
        return windows

    def __len__(self) -> int:
        return len(self.view) if self.starts is None else len(self.starts)

    def __getitem__(self, index: slice | np.ndarray) -> torch.Tensor:
        """Windows at positions ``index`` of this collection -> int64 [B, T]."""
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if self.starts is not None:
            rows = self.starts[rows]
        return torch.from_numpy(self.view[rows].astype(np.int64))

    def as_array(self) -> np.ndarray:
        """All windows as an int32 array [N, T]: the strided view itself (no copy) when every
        window is kept, a copy of the subset's rows otherwise."""
        return self.view if self.starts is None else self.view[self.starts]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Mini-batches [B, T] covering every window once; ``shuffle`` uses a permutation fixed
        by ``seed``, so a resumed epoch can skip its first ``start_batch`` batches exactly."""
        batch_size = check_int(batch_size, "batch size", 1)
        start_batch = check_int(start_batch, "start_batch", 0)
        order = permutation(len(self), seed) if shuffle else np.arange(len(self))
        for b in range(start_batch, self.num_batches(batch_size)):
            yield self[order[b * batch_size:(b + 1) * batch_size]]

    def num_batches(self, batch_size: int) -> int:
        """Number of mini-batches of at most ``batch_size`` windows."""
        return -(-len(self) // batch_size)
