"""Early stopping on a held-out set, for any model the EM loop trains: after every epoch the
model is scored on the held-out data (mean log-likelihood, higher is better); the parameters of
the best epoch so far are kept (a copy in memory); training stops after ``patience`` epochs
without improvement, and :meth:`EarlyStopping.restore` puts the best parameters back."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hmmlvd.core.validate import check_int
from hmmlvd.em.loop import EpochStats, Progress


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

    def __call__(self, state: Progress, stats: EpochStats) -> bool:
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

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """What a checkpoint keeps to resume exactly: (scores, best epoch and where patience
        counts from, as JSON values; the best epoch's parameters by name, empty if none)."""
        return ({"scores": list(self.scores), "best_epoch": self.best_epoch,
                 "since": self._since}, dict(self._best or {}))

    def load_state(self, saved: dict, best: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state`'s output (read back from a checkpoint): ValueError if
        it does not fit (a best epoch without parameters, or beyond the scores)."""
        scores = [float(s) for s in saved["scores"]]
        best_epoch = check_int(saved["best_epoch"], "best_epoch", 0)
        since = check_int(saved["since"], "since", 0)
        if best_epoch > len(scores) or since > len(scores) or bool(best_epoch) != bool(best):
            raise ValueError(f"early-stopping state does not fit: best epoch {best_epoch} of "
                             f"{len(scores)} scores, {len(best)} best parameters")
        self.scores, self.best_epoch, self._since = scores, best_epoch, since
        self._best = dict(best) if best else None

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the best epoch's parameters back into the model (nothing if none scored)."""
        if self._best is None:
            return
        current = self.parameters()
        for name, value in self._best.items():
            current[name].copy_(value)
