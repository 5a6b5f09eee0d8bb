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
from pathlib import Path

import torch

from hmmlvd.cli_flags import (
    add_data_args,
    add_em_args,
    add_lvd_args,
    lvd_settings_from,
    train_config_from,
)
from hmmlvd.cli_image import parse_image_args
from hmmlvd.cli_queries import (
    add_constraint_args,
    add_query_parsers,
    check_sampling,
    cmd_decode,
    cmd_infill,
    constraint_from,
    sample_constrained,
)
from hmmlvd.core import distributed
from hmmlvd.core.device import DTYPE_NAMES, resolve_device
from hmmlvd.core.errors import CheckpointError, DataError, HMMLVDError
from hmmlvd.data.vocab import UNK
from hmmlvd.hmm.model import HMM
from hmmlvd.hmm.train import TrainingInterrupted
from hmmlvd.pipelines.text import (
    DEFAULT_LENGTH,
    DEFAULT_STATES,
    EvalSettings,
    TextTraining,
    evaluate_model,
    train_text,
)


def flag_name(dest: str) -> str:
    """``eval_batch_size`` -> ``--eval-batch-size``."""
    return "--" + dest.replace("_", "-")


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


def eval_settings_from(args: argparse.Namespace) -> EvalSettings:
    """The evaluation settings named by the eval flags."""
    return EvalSettings(splits=tuple(args.splits), batch_size=args.eval_batch_size,
                        max_tokens=args.max_eval_tokens, window_ppl=args.window_ppl,
                        dtype=args.dtype if args.command == "eval" else "float32")


def text_training_from(args: argparse.Namespace) -> TextTraining:
    """The training run named by the train / lvd flags."""
    is_lvd = args.command == "lvd"
    evaluate = eval_settings_from(args)  # its flags are checked with --no-eval too
    return TextTraining(
        out=args.out, data_dir=args.data_dir, hidden_states=args.hidden_states,
        length=args.length, homogeneous=args.homogeneous, max_windows=args.max_windows,
        em=train_config_from(args), init=None if is_lvd else args.init,
        lvd=lvd_settings_from(args) if is_lvd else None,
        lvd_windows=args.lvd_windows if is_lvd else None, resume=args.resume,
        evaluate=None if args.no_eval else evaluate, device=args.device,
        command=args.command)


def cmd_train(args: argparse.Namespace) -> None:
    train_text(text_training_from(args))


def cmd_eval(args: argparse.Namespace) -> None:
    evaluate_model(args.model, args.data_dir, eval_settings_from(args), args.device)


def cmd_sample(args: argparse.Namespace) -> None:
    check_sampling(args.num_samples, args.seed)
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


COMMANDS = {"train": cmd_train, "lvd": cmd_train, "eval": cmd_eval, "sample": cmd_sample,
            "decode": cmd_decode, "infill": cmd_infill, "image": cmd_image}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `hmmlvd image ...` has its own parser: its LVD flags exist only with --model lvd
    args = (parse_image_args(argv[1:]) if argv[:1] == ["image"]
            else build_parser().parse_args(argv))
    try:
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
        lost = distributed.lost_peer(exc) if distributed.is_distributed() else None
        if lost is not None:
            detail = distributed.describe_lost_peer(lost)
        elif is_allocation_failure(exc):
            detail = describe_memory_error(exc)
        else:
            raise
        print(f"hmmlvd {args.command}: error: {detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second signal while training stops: exc.signal
        print(f"\nhmmlvd {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signal", signal.SIGINT)
    finally:
        distributed.teardown()
    return 0
