"""The EM flags of every training command (``hmmlvd train`` / ``lvd``, ``hmmlvd image train``,
``scripts/lvd_vs_random.py``, ``scripts/image_bpd.py``): defined once, their defaults read from
the :class:`~hmmlvd.em.config.EMConfig` the command starts from (``EMConfig()`` for text,
``CIRCUIT_EM`` for images), and read back into an ``EMConfig`` by :func:`em_config_from`."""

from __future__ import annotations

import argparse
import dataclasses

from hmmlvd.core.device import DTYPE_NAMES
from hmmlvd.core.errors import DataError
from hmmlvd.em.config import LEAF_PRIORS, PSEUDOCOUNT_PER, EMConfig

EM_FIELDS = frozenset(f.name for f in dataclasses.fields(EMConfig))


def add_em_flags(p: argparse.ArgumentParser, defaults: EMConfig, samples: str, *,
                 text: bool, notes: dict[str, str] | None = None) -> None:
    """The EM flags with ``defaults``' values; ``samples`` names what a batch holds
    ("windows", "images"); ``text``: the HMM's flags (a second phase, every epoch
    full-batch, the compute dtype), else circuits' (the leaf prior); ``notes``: a sentence
    added to a flag's help, by flag name (e.g. what the flag means for image LVD's stages)."""
    notes = notes or {}

    def note(flag: str) -> str:
        return f" ({notes[flag]})" if flag in notes else ""

    em = defaults
    p.add_argument("--epochs", type=int, default=em.epochs,
                   help=f"mini-batch EM epochs{note('epochs')} (default {em.epochs})")
    p.add_argument("--step-size", type=float, default=em.step_size,
                   help=f"EM step size a (default {em.step_size})")
    p.add_argument("--final-step-size", type=float, default=em.final_step_size, metavar="A",
                   help="anneal the step size linearly from --step-size to A over the "
                        f"mini-batch epochs{note('final-step-size')}, as the LVD paper trains "
                        "(default: constant)")
    if text:
        p.add_argument("--phase2-epochs", type=int, default=em.phase2_epochs,
                       help=f"then this many epochs at --phase2-step-size (default "
                            f"{em.phase2_epochs})")
        p.add_argument("--phase2-step-size", type=float, default=em.phase2_step_size,
                       help=f"phase-2 step size (default {em.phase2_step_size})")
    p.add_argument("--batch-size", type=int, default=em.batch_size,
                   help=f"{samples} per EM step{note('batch-size')} (default {em.batch_size:,})")
    p.add_argument("--pseudocount", type=float, default=em.pseudocount,
                   help=f"M-step pseudocount (default {em.pseudocount:g})")
    p.add_argument("--pseudocount-per", choices=PSEUDOCOUNT_PER, default=em.pseudocount_per,
                   help="batch: every M-step adds the pseudocount (default); data: it is a "
                        f"prior over all training {samples}, a mini-batch M-step adds "
                        "pseudocount * B / N (the same smoothing in mini-batch and full-batch "
                        "epochs)")
    if not text:
        p.add_argument("--leaf-prior", choices=LEAF_PRIORS, default=em.leaf_prior,
                       help="how the pseudocount of the pixel distributions is spread over the "
                            "256 levels: uniform (default) or marginal (by each pixel's "
                            "histogram in the training images)")
    if text:
        p.add_argument("--full-batch", action="store_true",
                       help=f"every epoch full-batch: one M-step per epoch from all {samples}")
    p.add_argument("--final-full-batch", type=int, default=em.final_full_batch, metavar="N",
                   help="then N full-batch epochs at step size 1, from the best mini-batch "
                        f"epoch{note('final-full-batch')} (default {em.final_full_batch})")
    p.add_argument("--patience", type=int, default=em.patience, metavar="N",
                   help="score the valid split after every epoch, keep the best epoch, and end "
                        "the mini-batch epochs after N without improvement (0, default: no "
                        "validation; --epochs is then the most)")
    p.add_argument("--seed", type=int, default=em.seed,
                   help=f"seeds the EM batch order{note('seed')} (default {em.seed})")
    if text:
        p.add_argument("--dtype", choices=DTYPE_NAMES, default=em.dtype,
                       help="compute dtype of the E-step (auto, default: bfloat16 where the "
                            "CPU/GPU multiplies it natively, else float32); parameters, counts "
                            "and reported perplexities are float32 either way")


def em_config_from(args: argparse.Namespace, defaults: EMConfig) -> EMConfig:
    """``defaults`` with every EM setting the parsed flags name (those of
    :func:`add_em_flags`, and ``--checkpoint-every`` where a command has it), checked by
    :class:`EMConfig`; its DataError names the flag whose value it refuses."""
    given = {k: v for k, v in vars(args).items() if k in EM_FIELDS}
    try:
        return dataclasses.replace(defaults, **given)
    except DataError as exc:
        raise DataError(_naming_the_flag(defaults, given, exc)) from exc


def _naming_the_flag(defaults: EMConfig, given: dict, exc: DataError) -> str:
    """``exc``'s message (EMConfig refused ``given``) with the flag of the first setting that is
    refused on its own: "step size must lie in (0, 1], got 2.0" of ``step_size`` reads
    "--step-size must lie in (0, 1], got 2.0". A refused combination keeps its message."""
    for name, value in given.items():
        try:
            dataclasses.replace(defaults, **{name: value})
        except DataError as alone:
            flag = "--" + name.replace("_", "-")
            _, must, rest = str(alone).partition(" must ")
            return f"{flag} must {rest}" if must else f"{flag}: {alone}"
    return str(exc)
