"""The text pipelines: training an HMM on WikiText-2 (random init, a saved model, or LVD) into
a run folder, and evaluating a model beside the n-gram baselines. ``hmmlvd train`` / ``lvd`` /
``eval`` only parse their flags into these configs; a script or a user of the Python API calls
the same functions.

A run folder holds checkpoints while training (``checkpoints/``; resume with
``TextTraining(resume=True)``), then the model (``model.safetensors``, ``config.json``,
``vocab.txt``) and ``results.json`` (settings, how the model was initialised, per-epoch history,
perplexities). Under torchrun every rank trains; rank 0 alone prints, saves, evaluates and writes
results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hmmlvd.core import distributed
from hmmlvd.core.allocator import keep_freed_memory
from hmmlvd.core.atomic import atomic_write_json, check_writable, make_folder
from hmmlvd.core.device import resolve_device, resolve_dtype
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.core.outdir import (
    TEXT_RUN,
    clear_stopped_early,
    output_folder,
    record_started,
    stopped_early,
)
from hmmlvd.core.provenance import check_same_training, training_record
from hmmlvd.core.validate import check_count
from hmmlvd.data.wikitext import WikiText, load_wikitext
from hmmlvd.data.windows import TokenWindows
from hmmlvd.em.checkpoints import FOLDER as CHECKPOINTS_FOLDER
from hmmlvd.em.checkpoints import POINTER as CHECKPOINTS_POINTER
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import TrainingInterrupted
from hmmlvd.hmm import memory as hmm_memory
from hmmlvd.hmm.checkpoint import read_config
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.eval import sliding_perplexity, window_perplexity
from hmmlvd.hmm.model import HMM
from hmmlvd.hmm.resume import load_checkpoint
from hmmlvd.hmm.train import train
from hmmlvd.ngram import baseline_perplexities

if TYPE_CHECKING:  # imports transformers: loaded only when LVD runs
    from hmmlvd.lvd.text.distill import LVDSettings

BASELINE_ORDERS = (1, 2, 3)  # unigram, Kneser–Ney bigram and trigram beside every result
DEFAULT_STATES = 64
DEFAULT_LENGTH = 32
SPLITS = ("train", "valid", "test")
#: Where a run's checkpoints keep what its initialisation recorded (``_initialiser``), so that
#: the ``results.json`` of a resumed run still holds it.
INITIALISATION = "initialisation"


@dataclass(frozen=True)
class EvalSettings:
    """How a model is scored: sliding perplexity on ``splits`` (and window perplexity with
    ``window_ppl``), ``batch_size`` windows at a time, the first ``max_tokens`` of each split
    (None: all), the forward's matmuls in ``dtype`` (log-probabilities summed in float32)."""

    splits: tuple[str, ...] = ("valid", "test")
    batch_size: int = 1024
    max_tokens: int | None = None
    window_ppl: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise DataError(f"unknown splits {bad}: use {', '.join(SPLITS)}")
        check_count(self.batch_size, "--eval-batch-size", "EvalSettings.batch_size")
        if self.max_tokens is not None:
            check_count(self.max_tokens, "--max-eval-tokens", "EvalSettings.max_tokens")


@dataclass(frozen=True)
class TextTraining:
    """Everything a text training run does (``hmmlvd train`` and ``hmmlvd lvd``).

    ``out``: the run folder (locked for the run). The model: ``hidden_states`` H and
    ``length`` T (None: the defaults, or those of the ``init`` model), ``homogeneous``.
    Where it starts: ``init`` (a saved model), else ``lvd`` (distil it from ``lvd_windows``
    embedded train windows), else seeded random parameters. ``em``: the EM settings
    (:class:`~hmmlvd.em.config.EMConfig`; ``patience`` scores the valid split after every
    epoch), on ``max_windows`` seeded train windows (None: all). ``resume``: continue the
    stopped run in ``out``. ``evaluate``: None skips evaluation. ``command`` names the run in
    its records.

    For a caller that runs many of these (``scripts/lvd_vs_random.py``, one run folder per
    initialisation and H): ``save_model`` False writes only the results, not the trained model;
    ``record`` is JSON kept in ``results.json`` under ``"record"`` (e.g. the settings a sweep
    names its run folders by, so that it can read a finished run back)."""

    out: Path
    data_dir: Path | None = None
    hidden_states: int | None = None
    length: int | None = None
    homogeneous: bool = False
    max_windows: int | None = None
    em: EMConfig = field(default_factory=EMConfig)
    init: Path | None = None
    lvd: LVDSettings | None = None
    lvd_windows: int | None = None
    resume: bool = False
    evaluate: EvalSettings | None = field(default_factory=EvalSettings)
    device: str = "auto"
    command: str = "train"
    save_model: bool = True
    record: dict = field(default_factory=dict)


def train_text(run: TextTraining) -> dict:
    """Load the data, initialise (or resume), run EM, save, evaluate; returns what
    ``results.json`` records (on rank 0; other ranks: an empty dict). ``run.out`` is checked,
    locked and cleared of temporary files first (:mod:`hmmlvd.core.outdir`; without ``resume`` a
    stopped run there, or a run of another kind, is refused)."""
    keep_freed_memory()  # EM steps reuse the last step's memory (hmmlvd.core.allocator)
    device = distributed.init(resolve_device(run.device))
    if run.lvd is not None and distributed.is_main():  # before any work
        check_writable(make_folder(run.lvd.cache_dir, "embedding cache folder"),
                       "embedding cache folder")
    with output_folder(run.out, TEXT_RUN, run.resume):
        try:
            return _train_in_folder(run, device)
        except Exception as exc:
            # a failed run leaves a folder as it found it; a stopped one keeps its note
            if not isinstance(exc, TrainingInterrupted) and not _has_checkpoint(run.out):
                clear_stopped_early(run.out)
            raise


def _has_checkpoint(out: Path) -> bool:
    """Whether ``out`` has a checkpoint to resume from (its ``latest`` pointer)."""
    return (out / CHECKPOINTS_FOLDER / CHECKPOINTS_POINTER).is_file()


def model_shape(run: TextTraining, vocab_size: int) -> TextTraining:
    """``run`` with H, T and homogeneity filled in: from the ``init`` model (refusing settings
    that contradict it, or data with another vocabulary size), else the defaults."""
    if run.init is None:
        return replace(run, hidden_states=DEFAULT_STATES if run.hidden_states is None
                       else run.hidden_states,
                       length=DEFAULT_LENGTH if run.length is None else run.length)
    config = read_config(run.init)
    given = {"--hidden-states": (run.hidden_states, config.num_states),
             "--length": (run.length, config.length),
             "--homogeneous": (run.homogeneous or None, config.homogeneous or None)}
    for flag, (value, model) in given.items():
        if value is not None and value != model:
            raise DataError(f"{flag} {value} contradicts the --init model {run.init}, which "
                            f"has {flag.strip('-')} = {model}; leave the flag out to use the "
                            "model's")
    if config.vocab_size != vocab_size:
        raise DataError(f"the --init model {run.init} has vocab_size {config.vocab_size:,} but "
                        f"the data has {vocab_size:,} words: initialise from a model of this "
                        "data")
    return replace(run, hidden_states=config.num_states, length=config.length,
                   homogeneous=config.homogeneous)


def _initialiser(run: TextTraining) -> Callable[[WikiText, torch.device, dict], HMM]:
    """How the starting model is made: from ``init``, by LVD, or seeded random. Each records
    in its ``summary`` argument what ``results.json`` says of it (``init``: the model's folder;
    ``lvd_seconds``: embed, cluster and MLE seconds, ``lvd_windows``)."""

    def from_init(data: WikiText, device: torch.device, summary: dict) -> HMM:
        hmm = HMM.from_pretrained(run.init, device=device)
        if hmm.vocab is not None and hmm.vocab != data.vocab:
            raise DataError(f"the --init model {run.init} has another vocabulary than the data "
                            "(same size, different words): initialise from a model of this "
                            "data")
        hmm.vocab = data.vocab
        summary["init"] = str(run.init)
        return hmm

    def by_lvd(data: WikiText, device: torch.device, summary: dict) -> HMM:
        from hmmlvd.lvd.text.distill import lvd_subset, run_lvd  # loads transformers

        subset = lvd_subset(data.train, run.length, run.lvd_windows, seed=run.em.seed)
        distributed.print_main(f"LVD: embedding and clustering {len(subset):,} of the "
                               f"{len(subset.view):,} train windows")
        result = run_lvd(subset, run.hidden_states, data.vocab, run.lvd,
                         homogeneous=run.homogeneous, device=device,
                         progress=distributed.is_main())
        distributed.print_main("LVD stages (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in result.seconds.items()))
        summary["lvd_seconds"] = result.seconds
        summary["lvd_windows"] = len(subset)
        return result.hmm

    def random(data: WikiText, device: torch.device, summary: dict) -> HMM:
        return HMM(run.hidden_states, len(data.vocab), run.length, run.homogeneous,
                   seed=run.em.seed, device=device, vocab=data.vocab)

    return from_init if run.init is not None else by_lvd if run.lvd is not None else random


def _train_in_folder(run: TextTraining, device: torch.device) -> dict:
    """The work of :func:`train_text`, while ``run.out`` is locked."""
    say = distributed.print_main
    data = load_wikitext(run.data_dir)
    run = model_shape(run, len(data.vocab))
    config = run.em
    windows = TokenWindows(data.train, run.length, max_windows=run.max_windows,
                           seed=config.seed)
    summary: dict = {"command": run.command, "train_windows": len(windows),
                     "train_config": asdict(config), "world_size": distributed.world_size()}
    trained_on = training_record(run.command, data.train, len(windows), run.max_windows,
                                 config.seed, run.hidden_states, run.length, run.homogeneous)
    summary["trained_on"] = trained_on
    subset = (f" (a seeded random subset of the {len(windows.view):,} train windows)"
              if len(windows) < len(windows.view) else "")
    dtype = resolve_dtype(config.dtype, device)
    shard = -(-config.batch_size // distributed.world_size())
    sizes = HMMConfig(run.hidden_states, len(data.vocab), run.length, run.homogeneous)
    say(hmm_memory.describe(hmm_memory.training_estimate(
        sizes, shard, config.any_full_batch, dtype, config.any_mini_batch), dtype))
    if run.resume and not _has_checkpoint(run.out) and stopped_early(run.out):
        say(f"{run.out}: the run stopped before its first checkpoint, nothing to resume: "
            "starting it over")
        run = replace(run, resume=False)
    if run.resume:
        # the saved EM config is compared with this one by train(), before any batch
        hmm, _, checkpoints = load_checkpoint(run.out, device=device)
        if hmm.vocab != data.vocab:
            raise CheckpointError(
                f"the checkpoint's vocabulary differs from this data's "
                f"({len(hmm.vocab) if hmm.vocab else 'no'} vs {len(data.vocab)} words): resume "
                "with the data folder the run was started with")
        check_same_training(checkpoints.trained_on, trained_on, run.out)
        checkpoints.trained_on = trained_on  # recorded from now on
        summary.update(checkpoints.record.get(INITIALISATION, {}))
        at = checkpoints.progress
        say(f"resuming from epoch {at.epoch + 1}, batch {at.batch} (step {at.step})")
    else:
        # fail now, not after a long LVD initialisation, if the model and EM cannot fit
        hmm_memory.check_training(sizes, shard, device, config.any_full_batch, dtype=dtype,
                                  mini_batch=config.any_mini_batch)
        if distributed.is_main():  # a kill before the first checkpoint: --resume starts over
            record_started(run.out)
        initialised: dict = {}
        hmm = _initialiser(run)(data, device, initialised)
        summary.update(initialised)
        checkpoints = EMCheckpoints(run.out, trained_on=trained_on)
        checkpoints.record[INITIALISATION] = initialised  # for results.json after a resume
    ranks = f" on {distributed.world_size()} ranks" if distributed.is_distributed() else ""
    if not config.epoch_plan():
        say("no EM epochs: saving the initial model")
    else:
        say(f"training {hmm} on {len(windows):,} windows{subset}, "
            f"{hmm.num_parameters:,} parameters{ranks}")
    started = time.perf_counter()
    valid = TokenWindows(data.valid, run.length) if config.patience else None
    state = train(hmm, windows, config, valid=valid, checkpoints=checkpoints)
    summary["train_seconds_this_run"] = time.perf_counter() - started
    if not distributed.is_main():
        return {}
    if run.save_model:
        hmm.save_pretrained(run.out)
        print(f"saved model to {run.out} ({summary['train_seconds_this_run']:.1f} s of EM this "
              "run)")
    # run_id: tells a finished run's folder from one whose newest checkpoints a later,
    # stopped run wrote (hmmlvd.core.outdir.run_in_folder)
    summary.update(model=hmm.config.to_dict(), history=state.history,
                   run_id=checkpoints.run_id)
    if run.evaluate is not None:
        summary["eval"] = evaluate_text(hmm, data, run.evaluate)
    if run.record:
        summary["record"] = run.record
    atomic_write_json(run.out / "results.json", summary)
    clear_stopped_early(run.out)
    return summary


def evaluate_text(hmm: HMM, data: WikiText, settings: EvalSettings) -> dict[str, dict]:
    """Sliding (and optionally window) perplexity on each split of ``settings``, printed in a
    table beside the unigram and Kneser–Ney baselines on the same token streams."""
    dtype = resolve_dtype(settings.dtype, hmm.device)
    if dtype != torch.float32:
        print(f"forward matmuls in {str(dtype).removeprefix('torch.')}")
    results = {}
    streams = {split: data.split(split)[: settings.max_tokens] for split in settings.splits}
    for split, stream in streams.items():
        row = {}
        started = time.perf_counter()
        ppl = sliding_perplexity(hmm, stream, settings.batch_size, progress=True, dtype=dtype)
        row["sliding_ppl"], row["tokens"] = ppl.perplexity, ppl.count
        if settings.window_ppl:
            windows = TokenWindows(stream, hmm.length)
            wppl = window_perplexity(hmm, windows, settings.batch_size, progress=True)
            row["window_ppl"], row["windows"] = wppl.perplexity, wppl.count
        row["seconds"] = time.perf_counter() - started
        results[split] = row
    baselines = {row.name: row.perplexity
                 for row in baseline_perplexities(data, BASELINE_ORDERS, streams=streams)}
    print(f"\n{'model':<18} " + " ".join(f"{s + ' ppl':>11}" for s in results))
    print(f"{'this HMM':<18} " + " ".join(f"{r['sliding_ppl']:>11.2f}" for r in results.values()))
    for name, ppl in baselines.items():
        print(f"{name:<18} " + " ".join(f"{ppl[s]:>11.2f}" for s in results))
    print(f"(sliding: each token predicted from the {hmm.length - 1} tokens before it; "
          "n-grams fitted on train, scored on the same tokens: " +
          ", ".join(f"{s} {r['tokens']:,}" for s, r in results.items()) + ")")
    if settings.window_ppl:
        print("window ppl: " + ", ".join(f"{s} {r['window_ppl']:.2f} ({r['windows']:,} windows)"
                                         for s, r in results.items()))
    for split, row in results.items():
        row["baselines"] = {name: ppl[split] for name, ppl in baselines.items()}
    return results


def evaluate_model(model: Path, data_dir: Path | None, settings: EvalSettings,
                   device: str = "auto") -> dict[str, dict]:
    """:func:`evaluate_text` of a saved model on the WikiText-2 splits in ``data_dir``."""
    hmm = HMM.from_pretrained(model, device=resolve_device(device))
    data = load_wikitext(data_dir, vocab=hmm.vocab)
    if hmm.vocab is None and len(data.vocab) != hmm.vocab_size:
        raise CheckpointError(f"the model has vocab_size {hmm.vocab_size} but the data has "
                              f"{len(data.vocab)} words")
    return evaluate_text(hmm, data, settings)
