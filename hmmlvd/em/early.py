"""Early stopping on a held-out set, for any model the EM loop trains: after every epoch the
model is scored on the held-out data (mean log-likelihood, higher is better); the parameters of
the best epoch so far are kept (a copy in memory); training stops after ``patience`` epochs
without improvement, and :meth:`EarlyStopping.restore` puts the best parameters back."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hmmlvd.em.loop import EpochStats, LoopState
from hmmlvd.validate import check_int


class EarlyStopping:
    """``score()``: the held-out mean log-likelihood of the model as it is now;
    ``parameters()``: its parameter tensors by name (copied when they are the best);
    ``patience``: stop after this many epochs without a better score (0: never stop early,
    still keep and restore the best). Use as the ``after_epoch`` hook of
    :func:`hmmlvd.em.loop.run_epochs`, then call :meth:`restore`."""

    def __init__(self, score: Callable[[], float],
                 parameters: Callable[[], dict[str, torch.Tensor]], patience: int = 0):
        self.score = score
        self.parameters = parameters
        self.patience = check_int(patience, "patience", 0)
        self.scores: list[float] = []  # held-out score after each epoch
        self.best_epoch = 0  # 1-based; 0: no epoch scored yet
        self._since = 0  # patience counts epochs after max(best_epoch, _since)
        self._best: dict[str, torch.Tensor] | None = None

    @property
    def best_score(self) -> float:
        return self.scores[self.best_epoch - 1] if self.best_epoch else float("-inf")

    def __call__(self, state: LoopState, stats: EpochStats) -> bool:
        """Score the epoch just finished; True when training should stop."""
        value = float(self.score())
        self.scores.append(value)
        if value > self.best_score:
            self.best_epoch = len(self.scores)
            self._best = {k: t.detach().clone() for k, t in self.parameters().items()}
        waited = len(self.scores) - max(self.best_epoch, self._since)
        return bool(self.patience) and waited >= self.patience

    def restart_patience(self) -> None:
        """Count patience afresh from now (a new phase of training, e.g. full-batch epochs
        after the mini-batch ones, gets its own ``patience`` epochs); the best so far stays."""
        self._since = len(self.scores)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the best epoch's parameters back into the model (nothing if none scored)."""
        if self._best is None:
            return
        current = self.parameters()
        for name, value in self._best.items():
            current[name].copy_(value)
