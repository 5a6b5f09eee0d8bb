"""Memory and speed of a full EM step on one GPU, side by side with PyJuice's HMM.

What it measures, on one device, with seeded random tokens (the data does not matter for speed):

1. **Full EM step, non-homogeneous** (the LVD paper's model), for each H (default 256, 512,
   1024, 2048, 4096) at V = 33,278, T = 32 and ``--batch-size`` windows: ``expected_counts``
   (forward + backward by autograd) followed by ``maximize`` (the M-step). Reported: peak memory
   (``torch.cuda.max_memory_allocated``; the process' peak RSS on cpu), the estimated need
   (:func:`estimate_bytes`), tokens/s, and the achieved FLOP/s (3 x 2*B*T*H^2, as in
   ``bench_hmm.py``) as a fraction of the fp32 and of the bf16 matmul rate measured in the
   same run (large square matmuls). The model computes in fp32 (no TF32), so the fp32 fraction
   is the one to read; the bf16 one says what a bf16 kernel could at most reach. A size that
   does not fit says so (``torch.cuda.OutOfMemoryError`` caught, or the estimate above the
   memory at hand) with the estimated need.
2. **Homogeneous HMM at batch 512, forward and forward + backward**, ours
   (``log_likelihood`` and ``expected_counts``) and PyJuice's (``pyjuice.structures.HMM``,
   compiled, ``pc(x)`` then ``pc.backward(x)``), as PyJuice's own HMM speed test times it
   (T = 32, V = 33,279 there; RTX 4090: forward 0.96 ms + backward 3.5 ms at H = 512, 9.1 +
   21.3 ms at H = 2048). PyJuice columns read "n/a" with the reason when it is not installed,
   when there is no CUDA GPU, or when it fails.

Every timing is the median of ``--repeats`` runs after ``--warmup`` untimed ones (with
``torch.cuda.synchronize`` on cuda).

Run::

    python scripts/bench_gpu.py                                  # on a GPU machine
    python scripts/bench_gpu.py --write docs/results.md          # also record the tables
    python scripts/bench_gpu.py --device cpu --hidden-states 16 32 --vocab 500 --batch-size 64

``--write`` replaces the ``bench_gpu`` section of that file (see ``hmmlvd.core.report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hmmlvd.core.report import device_name, provenance, write_section
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.em import expected_counts
from hmmlvd.hmm.memory import training_estimate
from hmmlvd.hmm.model import HMM

from benchlib import (
    matmul_rate,
    median_seconds,
    parse_bench_args,
    peak_memory,
    percent,
    random_windows,
    si,
    synchronize,
    time_em_step,
    time_forward,
)

SECTION = "bench_gpu"
GIB = 2**30


# ----- memory -------------------------------------------------------------------------------
def estimate_bytes(num_states: int, vocab_size: int, length: int, batch_size: int,
                   homogeneous: bool = False) -> int:
    """Bytes a mini-batch EM step needs at its peak: the library's own estimate
    (:func:`hmmlvd.hmm.memory.training_estimate`, what ``train`` checks before the first batch)."""
    config = HMMConfig(num_states, vocab_size, length, homogeneous)
    return training_estimate(config, batch_size).total


def memory_at_hand(device: torch.device, limit_gib: float | None) -> int:
    """Bytes the run may use: ``--memory-limit`` if given, else the GPU's total memory, else
    the machine's available RAM."""
    if limit_gib is not None:
        return int(limit_gib * GIB)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**62


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors of torch on cuda or cpu."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "not enough memory" in text)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ----- 1. full EM step, non-homogeneous -----------------------------------------------------
@dataclass
class EMResult:
    """One H of table 1; ``seconds`` None when it did not fit."""

    num_states: int
    estimate: int
    seconds: float | None = None
    peak: int | None = None
    reason: str = ""

    def tokens_per_s(self, args: argparse.Namespace) -> float:
        return args.batch_size * args.length / self.seconds

    def flops_per_s(self, args: argparse.Namespace) -> float:
        return 3 * 2.0 * args.batch_size * args.length * self.num_states**2 / self.seconds


def bench_em(num_states: int, args: argparse.Namespace, budget: int) -> EMResult:
    """Time the full EM step at H = ``num_states``, or say why it does not fit."""
    est = estimate_bytes(num_states, args.vocab_size, args.length, args.batch_size)
    result = EMResult(num_states, est)
    if est > budget:
        result.reason = f"needs ~{est / GIB:.1f} GiB > {budget / GIB:.1f} GiB"
        return result
    free_memory(args.device)
    hmm = x = None
    try:
        hmm = HMM(num_states, args.vocab_size, args.length, seed=args.seed, device=args.device)
        x = random_windows(args.batch_size, args.length, args.vocab_size, args.seed)
        x = x.to(args.device)
        result.seconds = time_em_step(hmm, x, args.repeats, args.warmup, args.step_size,
                                      args.pseudocount)
        result.peak = peak_memory(args.device)
    except Exception as exc:  # only OOM is expected; anything else is re-raised
        if not is_oom(exc):
            raise
        result.seconds = None
        result.reason = f"out of memory (needs ~{est / GIB:.1f} GiB)"
    finally:
        del hmm, x
        free_memory(args.device)
    return result


def em_table(results: Sequence[EMResult], rates: dict[str, float],
             args: argparse.Namespace) -> str:
    columns = ["H", "parameters", "est. need", "peak mem", "EM step", "tok/s",
               "% of fp32 matmul", "% of bf16 matmul"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for r in results:
        cfg = HMMConfig(r.num_states, args.vocab_size, args.length)
        params = sum(int(torch.Size(s).numel()) for s in cfg.shapes().values())
        cells = [str(r.num_states), si(params), si(r.estimate, "B")]
        if r.seconds is None:
            cells += [f"does not fit ({r.reason})", "-", "-", "-", "-"]
        else:
            flops = r.flops_per_s(args)
            cells += [si(r.peak, "B"), f"{r.seconds * 1e3:.3g} ms", si(r.tokens_per_s(args)),
                      percent(flops / rates["fp32"]), percent(flops / rates["bf16"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----- 2. homogeneous HMM at batch 512: ours and PyJuice's ----------------------------------
@dataclass
class PairResult:
    """One H of table 2: forward and forward + backward milliseconds, ours and PyJuice's."""

    num_states: int
    ours_forward: float | None = None
    ours_backward: float | None = None  # forward + backward (expected counts)
    ours_reason: str = ""
    juice_forward: float | None = None
    juice_backward: float | None = None  # backward alone (PyJuice times them apart)
    juice_reason: str = ""


def pyjuice_unavailable(device: torch.device) -> str | None:
    """Why PyJuice cannot run here (None when it can)."""
    if device.type != "cuda":
        return "PyJuice needs a CUDA GPU"
    try:
        import pyjuice  # noqa: F401
    except ImportError as exc:
        return f"pyjuice not installed ({exc.name or exc}); pip install pyjuice"
    return None


def bench_ours_homogeneous(num_states: int, args: argparse.Namespace, x: torch.Tensor
                           ) -> tuple[float, float]:
    """Seconds of our forward and of forward + backward (expected counts), homogeneous."""
    hmm = HMM(num_states, args.vocab_size, args.length, homogeneous=True, seed=args.seed,
              device=args.device)
    forward_s = time_forward(hmm, x, args.repeats, args.warmup)
    counts_s = median_seconds(lambda: expected_counts(hmm, x), args.device, args.repeats,
                              args.warmup)
    return forward_s, counts_s


def bench_pyjuice(num_states: int, args: argparse.Namespace, x: torch.Tensor
                  ) -> tuple[float, float]:
    """Seconds of PyJuice's forward and of its backward (node and parameter flows) on a
    homogeneous HMM built by ``pyjuice.structures.HMM``."""
    import pyjuice as juice

    root = juice.structures.HMM(seq_length=args.length, num_latents=num_states,
                                num_emits=args.vocab_size, homogeneous=True)
    pc = juice.compile(root) if hasattr(juice, "compile") else juice.TensorCircuit(root)
    pc.to(args.device)
    with torch.no_grad():
        forward_s = median_seconds(lambda: pc(x), args.device, args.repeats, args.warmup)

        def both() -> None:
            pc(x)
            pc.backward(x, flows_memory=1.0, allow_modify_flows=False)

        both_s = median_seconds(both, args.device, args.repeats, args.warmup)
    return forward_s, max(both_s - forward_s, 0.0)


def bench_pair(num_states: int, args: argparse.Namespace, juice_reason: str | None,
               budget: int) -> PairResult:
    result = PairResult(num_states)
    x = random_windows(args.pyjuice_batch_size, args.length, args.vocab_size, args.seed)
    x = x.to(args.device)
    est = estimate_bytes(num_states, args.vocab_size, args.length, args.pyjuice_batch_size,
                         True)
    runs: list[tuple[str, Callable]] = [("ours", bench_ours_homogeneous)]
    if juice_reason is None:
        runs.append(("juice", bench_pyjuice))
    else:
        result.juice_reason = juice_reason
    for who, fn in runs:
        if est > budget:
            setattr(result, f"{who}_reason", f"needs ~{est / GIB:.1f} GiB")
            continue
        free_memory(args.device)
        try:
            forward_s, second_s = fn(num_states, args, x)
            setattr(result, f"{who}_forward", forward_s)
            setattr(result, f"{who}_backward", second_s)
        except Exception as exc:  # a failing PyJuice must not stop the bench
            if who == "ours" and not is_oom(exc):
                raise
            setattr(result, f"{who}_reason",
                    "out of memory" if is_oom(exc) else f"failed: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:80] if str(exc) else ''}")
        finally:
            free_memory(args.device)
    return result


def pair_table(results: Sequence[PairResult], args: argparse.Namespace) -> str:
    tokens = args.pyjuice_batch_size * args.length
    columns = ["H", "ours fwd", "ours fwd+bwd", "ours tok/s (fwd+bwd)", "PyJuice fwd",
               "PyJuice bwd", "PyJuice tok/s (fwd+bwd)", "ours / PyJuice"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for r in results:
        if r.ours_forward is None:
            ours = [f"n/a ({r.ours_reason})", "-", "-"]
            ours_rate = None
        else:
            ours_rate = tokens / r.ours_backward
            ours = [f"{r.ours_forward * 1e3:.3g} ms", f"{r.ours_backward * 1e3:.3g} ms",
                    si(ours_rate)]
        if r.juice_forward is None:
            juice = [f"n/a ({r.juice_reason})", "-", "-"]
            ratio = "-"
        else:
            juice_rate = tokens / (r.juice_forward + r.juice_backward)
            juice = [f"{r.juice_forward * 1e3:.3g} ms", f"{r.juice_backward * 1e3:.3g} ms",
                     si(juice_rate)]
            ratio = f"{ours_rate / juice_rate:.2f}x" if ours_rate else "-"
        lines.append("| " + " | ".join([str(r.num_states), *ours, *juice, ratio]) + " |")
    return "\n".join(lines)


# ----- report -------------------------------------------------------------------------------
def measure_rates(args: argparse.Namespace) -> dict[str, float]:
    """Square-matmul FLOP/s in fp32 and bf16 on the device."""
    n = args.square_size
    return {name: matmul_rate(n, n, n, 1, args.device, args.repeats, args.warmup, dtype=dtype)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def report(em: Sequence[EMResult], pairs: Sequence[PairResult], rates: dict[str, float],
           args: argparse.Namespace, budget: int) -> str:
    memory = ("torch.cuda.max_memory_allocated" if args.device.type == "cuda"
              else "process peak RSS so far")
    tf32 = torch.backends.cuda.matmul.allow_tf32 if args.device.type == "cuda" else False
    head = (f"device: {args.device} ({device_name(args.device)}) | torch {torch.__version__} | "
            f"memory at hand: {budget / GIB:.1f} GiB | T={args.length} | V={args.vocab_size} | "
            f"matmul rate ({args.square_size}^3): fp32 {si(rates['fp32'], 'FLOP/s')} "
            f"(TF32 {'on' if tf32 else 'off'}), bf16 {si(rates['bf16'], 'FLOP/s')}")
    return "\n".join([
        head, "",
        f"**Full EM step** (forward + backward for the counts + M-step), non-homogeneous, "
        f"fp32, batch {args.batch_size} windows:", "",
        em_table(em, rates, args), "",
        f"FLOPs: 3 x 2*B*T*H^2 per EM step; medians of {args.repeats} runs after {args.warmup} "
        f"warm-up; peak mem = {memory}; est. need = hmmlvd.hmm.memory.training_estimate.", "",
        f"**Homogeneous HMM, batch {args.pyjuice_batch_size}**, ours vs PyJuice "
        f"({pyjuice_version()}); fwd+bwd = ours: expected counts (forward + autograd "
        "backward); PyJuice: pc(x) + pc.backward(x) (node and parameter flows):", "",
        pair_table(pairs, args), "",
        "PyJuice's own test (T=32, V=33,279, batch 512, RTX 4090): forward 0.96 ms + "
        "backward 3.5 ms at H=512, 9.1 + 21.3 ms at H=2048."])


def pyjuice_version() -> str:
    try:
        import pyjuice
    except ImportError:
        return "not installed"
    return f"pyjuice {getattr(pyjuice, '__version__', '?')}"


# ----- command line -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-states", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096],
                   metavar="H", help="numbers of hidden states (default 256 ... 4096)")
    p.add_argument("--vocab", "--vocab-size", dest="vocab_size", type=int, default=33278,
                   help="V (default 33278, WikiText-2)")
    p.add_argument("--length", type=int, default=32, help="window length T (default 32)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="windows per EM step in table 1 (default 512)")
    p.add_argument("--pyjuice-batch-size", type=int, default=512,
                   help="windows per batch in table 2, ours and PyJuice's (default 512, as in "
                        "PyJuice's HMM speed test)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (median; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--square-size", type=int, default=None,
                   help="size of the square matmuls for the peak rate (default 8192 on cuda, "
                        "512 on cpu)")
    p.add_argument("--device", default=None, help="cuda[:N] or cpu (default cuda if present)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="treat sizes whose estimated need exceeds this as not fitting "
                        "(default: the device's memory)")
    p.add_argument("--no-pyjuice", action="store_true", help="skip PyJuice")
    p.add_argument("--step-size", type=float, default=0.1, help="M-step step size")
    p.add_argument("--pseudocount", type=float, default=1e-3, help="M-step pseudocount")
    args = parse_bench_args(p, argv, SECTION)
    if args.square_size is None:
        args.square_size = 8192 if args.device.type == "cuda" else 512
    for name in ("vocab_size", "length", "batch_size", "pyjuice_batch_size", "repeats",
                 "square_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.hidden_states) < 1 or args.warmup < 0:
        p.error("--hidden-states must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    budget = memory_at_hand(args.device, args.memory_limit)
    rates = measure_rates(args)
    juice_reason = "skipped (--no-pyjuice)" if args.no_pyjuice else pyjuice_unavailable(
        args.device)
    em, pairs = [], []
    for h in args.hidden_states:
        print(f"bench_gpu: H={h} full EM step", file=sys.stderr, flush=True)
        em.append(bench_em(h, args, budget))
        print(f"bench_gpu: H={h} homogeneous, batch {args.pyjuice_batch_size}", file=sys.stderr,
              flush=True)
        pairs.append(bench_pair(h, args, juice_reason, budget))
    synchronize(args.device)
    printed = report(em, pairs, rates, args, budget)
    print(printed)
    if args.write is not None:
        body = "\n".join([provenance("GPU memory and speed (`scripts/bench_gpu.py`)",
                                     args.device), "", printed])
        write_section(args.write, SECTION, body)
        print(f"wrote the {SECTION} section of {args.write}", file=sys.stderr)
    return printed


if __name__ == "__main__":
    main()
