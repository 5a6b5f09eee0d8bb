"""The one EM configuration of every model: :class:`EMConfig`, used by ``HMM.fit``,
``Circuit.fit``, ``PatchCircuit.fit``, every image-LVD stage and the command lines.

An EM run is a *schedule* of epochs, each mini-batch (one M-step per shuffled batch, mixing
``theta <- (1 - a) theta + a theta_new``) or full-batch (one M-step from the counts of all
batches):

1. ``epochs`` at ``step_size`` (annealed linearly to ``final_step_size`` over them when given,
   the LVD paper's schedule);
2. then ``phase2_epochs`` at ``phase2_step_size`` (the paper's two-phase schedule);
3. then ``final_full_batch`` full-batch epochs at step size 1 (classic EM on all the data, from
   the best epoch so far when held-out data is scored; patience counts afresh there).

``full_batch`` makes the epochs of 1 and 2 full-batch too. With held-out data
(``fit(..., valid=...)``) every epoch is scored, the best epoch's parameters are kept, and
``patience`` epochs without improvement end a phase early.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hmmlvd.core.device import DTYPE_NAMES
from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int, check_pseudocount, check_seed, check_step_size
from hmmlvd.em.loop import Anneal, linear_anneal

LEAF_PRIORS = ("uniform", "marginal")  # how a categorical input's pseudocount is spread
PSEUDOCOUNT_PER = ("batch", "data")  # what one pseudocount is added to

#: A plan entry: the step size of an epoch (a number, or an :class:`Anneal`) and whether it is
#: full-batch.
PlanEntry = tuple["float | Anneal", bool]


@dataclass(frozen=True)
class EMConfig:
    """Settings of EM for every model, checked when made (:class:`~hmmlvd.core.errors.DataError`
    naming the bad value). The schedule is in the module docstring.

    The defaults are the text HMM's schedule chosen on WikiText-2 *valid* perplexity
    (docs/results.md, "EM schedule search on valid", H = 128 with LVD init: batches of 16,384
    windows, 2 epochs at step size 0.3, then one full-batch epoch, pseudocount 1e-4; the
    full-data LVD-vs-random sweep runs them). Image circuits need others, stated as the
    difference in :data:`hmmlvd.pc.em.CIRCUIT_EM`.

    ``batch_size``: samples (windows, images) per E-step; ``pseudocount`` (>= 0) added to every
    count before normalising, per M-step (``pseudocount_per="batch"``) or as a prior over the
    whole training set (``"data"``, MAP EM: a mini-batch M-step of B of the N samples adds
    ``pseudocount * B / N``, a full-batch one all of it); ``seed`` fixes every epoch's batch
    order (:func:`hmmlvd.data.batches.epoch_batches`); ``patience``: held-out epochs without
    improvement that end a phase (0: run every epoch); ``checkpoint_every``: also checkpoint
    every this many M-steps (0: epoch ends only); ``keep_checkpoints``: the newest kept of a
    run; ``dtype``: compute dtype of the HMM's E-step (``auto``: bfloat16 where the device
    multiplies it natively; circuits compute in float32 and accept only ``auto`` or
    ``float32``); ``leaf_prior``: how the pseudocount of categorical circuit inputs is spread,
    "uniform" or "marginal" (by each variable's histogram in the training data; the HMM's
    emissions take "uniform" only).
    """

    epochs: int = 2
    step_size: float = 0.3
    final_step_size: float | None = None
    phase2_epochs: int = 0
    phase2_step_size: float = 0.1
    final_full_batch: int = 1
    full_batch: bool = False
    batch_size: int = 16384
    pseudocount: float = 1e-4
    pseudocount_per: str = "batch"
    patience: int = 0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    dtype: str = "auto"
    leaf_prior: str = "uniform"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: store the checked, normalised values
        for name in ("epochs", "phase2_epochs", "final_full_batch", "patience",
                     "checkpoint_every"):
            set_(self, name, check_int(getattr(self, name), name, 0))
        set_(self, "batch_size", check_int(self.batch_size, "batch size", 1))
        set_(self, "keep_checkpoints", check_int(self.keep_checkpoints, "keep_checkpoints", 1))
        set_(self, "step_size", check_step_size(self.step_size))
        set_(self, "phase2_step_size", check_step_size(self.phase2_step_size))
        if self.final_step_size is not None:
            set_(self, "final_step_size", check_step_size(self.final_step_size))
            if self.phase2_epochs:
                raise DataError("final_step_size (a linear anneal) and phase2_epochs (a second "
                                "phase) are two schedules: give one of them")
        set_(self, "pseudocount", check_pseudocount(self.pseudocount))
        if not isinstance(self.full_batch, bool):
            raise DataError(f"full_batch must be True or False, got {self.full_batch!r}")
        set_(self, "seed", check_seed(self.seed, "seed"))
        for name, allowed in (("pseudocount_per", PSEUDOCOUNT_PER), ("dtype", DTYPE_NAMES),
                              ("leaf_prior", LEAF_PRIORS)):
            if getattr(self, name) not in allowed:
                raise DataError(f"{name} must be one of {', '.join(allowed)}, got "
                                f"{getattr(self, name)!r}")

    # ----- the schedule ----------------------------------------------------------------------
    def main_plan(self) -> list[PlanEntry]:
        """(step size, full batch) of each epoch of phases 1 and 2 (the first annealed when
        ``final_step_size`` is given)."""
        first = ([self.step_size] * self.epochs if self.final_step_size is None
                 else linear_anneal(self.step_size, self.final_step_size, self.epochs))
        steps = [*first, *[self.phase2_step_size] * self.phase2_epochs]
        return [(a, self.full_batch) for a in steps]

    def final_plan(self) -> list[PlanEntry]:
        """The ``final_full_batch`` epochs: step size 1, full batch."""
        return [(1.0, True)] * self.final_full_batch

    def epoch_plan(self) -> list[PlanEntry]:
        """Every epoch in order: :meth:`main_plan` then :meth:`final_plan`."""
        return self.main_plan() + self.final_plan()

    @property
    def num_epochs(self) -> int:
        return self.epochs + self.phase2_epochs + self.final_full_batch

    @property
    def any_full_batch(self) -> bool:
        return any(full for _, full in self.epoch_plan())

    @property
    def any_mini_batch(self) -> bool:
        return not all(full for _, full in self.epoch_plan())

    def step_pseudocount(self, full_batch: bool, num_samples: int) -> float:
        """The pseudocount one M-step adds (see ``pseudocount_per``) when the data has
        ``num_samples`` samples."""
        if self.pseudocount_per == "batch" or full_batch:
            return self.pseudocount
        return self.pseudocount * min(self.batch_size, num_samples) / num_samples

    # ----- as data ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, implied: dict | None = None) -> EMConfig:
        """The config a checkpoint recorded: ``raw`` (from :meth:`to_dict`), fields it lacks
        (settings added after it was written) taken from ``implied`` (what stood for their
        behaviour then), else the defaults. A record in the HMM's earlier ``phases`` form
        (a list of ``{epochs, step_size, full_batch}``) is read as the schedule it describes.
        :class:`DataError` for anything else."""
        if not isinstance(raw, dict):
            raise DataError(f"an EM config must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        if "phases" in raw:
            raw.update(_from_phases(raw.pop("phases")))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DataError(f"unknown EM settings {unknown}")
        return cls(**{**(implied or {}), **raw})


def _from_phases(phases: object) -> dict:
    """The schedule fields of an HMM ``phases`` record: [first] [+ second] [+ full-batch]."""
    try:
        phases = [(int(p["epochs"]), float(p["step_size"]), bool(p.get("full_batch", False)))
                  for p in phases]
    except (TypeError, KeyError, ValueError) as exc:
        raise DataError(f"unreadable phases record: {exc}") from exc
    final = 0
    if phases and phases[-1][2] and phases[-1][1] == 1.0:
        final = phases.pop()[0]
    if len(phases) > 2 or any(full for _, _, full in phases):
        raise DataError(f"phases {phases} are not a schedule of one or two mini-batch phases "
                        "and full-batch epochs")
    first = phases[0] if phases else (0, EMConfig.step_size, False)
    out = {"epochs": first[0], "step_size": first[1], "final_full_batch": final,
           "phase2_epochs": 0}
    if len(phases) == 2:
        out.update(phase2_epochs=phases[1][0], phase2_step_size=phases[1][1])
    return out


def em_config(config: EMConfig | None = None, default: EMConfig | None = None,
              **changes: object) -> EMConfig:
    """``config`` (default ``default``, else ``EMConfig()``) with the fields in ``changes``
    that are not None replaced, checked again. A ``config`` that is not an EMConfig is a
    DataError."""
    if config is None:
        config = default or EMConfig()
    elif not isinstance(config, EMConfig):
        raise DataError(f"config must be an EMConfig, got {type(config).__name__} "
                        "(give epochs, batch_size, ... by keyword)")
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(config, **given) if given else config
