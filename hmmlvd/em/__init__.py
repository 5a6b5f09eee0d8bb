"""The one EM core that HMMs, circuits and patch circuits share.

- :mod:`~hmmlvd.em.config`: :class:`EMConfig`, the one configuration of EM (schedule, batch,
  pseudocount, patience, seed, checkpoint cadence, compute dtype) for every model.
- :mod:`~hmmlvd.em.rule`: the M-step rule (with its one zero-count policy) and the one
  probability-zero check of the E-step.
- :mod:`~hmmlvd.data.batches` (re-exported): the one seeded epoch shuffle, which data and
  EM both use.
- :mod:`~hmmlvd.em.loop`: the one epoch loop (mini-batch or full-batch phases, progress bar,
  resumable position, hooks for checkpoints, Ctrl-C and data-parallel reductions);
  :mod:`~hmmlvd.em.early`: early stopping on held-out data, best epoch kept;
  :mod:`~hmmlvd.em.stop`: SIGINT / SIGTERM ask training to stop after the batch;
  :mod:`~hmmlvd.em.checkpoints`: the one run-folder format every model checkpoints into and
  resumes from (:class:`~hmmlvd.em.checkpoints.EMCheckpoints`).

Each model supplies only its E-step (expected counts by autograd: the counts of a parameter are
``theta * d log p(x) / d theta``) and applies the rule to its own tables, through a
:class:`~hmmlvd.em.loop.Learner`.
"""

from hmmlvd.data.batches import epoch_batches, epoch_order, epoch_seed, permutation
from hmmlvd.em.config import EMConfig, em_config
from hmmlvd.em.early import EarlyStopping
from hmmlvd.em.loop import Anneal, EpochStats, Learner, Progress, linear_anneal, run_epochs
from hmmlvd.em.rule import check_possible, mix_log_probabilities, mix_probabilities

__all__ = ["Anneal", "EMConfig", "EarlyStopping", "EpochStats", "Learner", "Progress",
           "check_possible", "em_config", "epoch_batches", "epoch_order", "epoch_seed",
           "linear_anneal", "mix_log_probabilities", "mix_probabilities", "permutation",
           "run_epochs"]
