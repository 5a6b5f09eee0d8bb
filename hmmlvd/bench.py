"""Helpers the benchmark scripts share (``scripts/bench_hmm.py``, ``bench_pc.py``,
``bench_gpu.py``): median wall time with CUDA synchronisation, the matmul rate every speed
target is a fraction of, peak memory, seeded random windows, the HMM's timed forward and EM
step (the M-step as it is and as it was before lazy emission scaling), number formatting and
the flags every benchmark shares.
Targets live in the scripts as ratios measured in one run, never in tests."""

from __future__ import annotations

import argparse
import importlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from hmmlvd.device import resolve_device
from hmmlvd.errors import DataError
from hmmlvd.hmm.em import ExpectedCounts, ScaledEmission, expected_counts, maximize
from hmmlvd.hmm.model import HMM


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on cuda; nothing on cpu."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(m: int, k: int, n: int, count: int, device: torch.device, repeats: int,
                warmup: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of ``count`` back-to-back [m,k] x [k,n] matmuls in ``dtype`` (default float32)."""
    a = torch.rand(m, k, device=device, dtype=dtype)
    b = torch.rand(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(count):
            torch.mm(a, b, out=out)

    seconds = median_seconds(run, device, repeats, warmup)
    return 2.0 * m * k * n * count / seconds


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated on cuda since the last reset, else the process' peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def random_windows(batch_size: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """Seeded uniform random token windows [B, T] (int64, on cpu)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length), generator=gen)


def time_forward(hmm: HMM, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of ``hmm.log_likelihood(x)``."""
    return median_seconds(lambda: hmm.log_likelihood(x), hmm.device, repeats, warmup)


def time_em_step(hmm: HMM, x: torch.Tensor, repeats: int, warmup: int, step_size: float,
                 pseudocount: float, dense: bool = False) -> float:
    """Median seconds of one mini-batch EM step (E-step + M-step; updates ``hmm`` in place):
    with the emission table held scaled across steps as ``train`` does, or (``dense``) with
    the dense M-step that rewrites the whole table."""
    scaled = ScaledEmission(hmm)

    def step() -> None:
        if dense:
            dense_maximize(hmm, expected_counts(hmm, x), step_size, pseudocount)
        else:
            maximize(hmm, expected_counts(hmm, x, scaled), step_size, pseudocount, scaled)

    seconds = median_seconds(step, hmm.device, repeats, warmup)
    scaled.materialise()
    return seconds


@torch.no_grad()
def dense_maximize(hmm: HMM, counts: ExpectedCounts, step_size: float,
                   pseudocount: float) -> None:
    """The M-step as it was before :class:`ScaledEmission`: the same update, with the
    emission part as a dense scale-and-shift of the whole [P_B, V, H] table every batch
    (``lerp_``) plus the sparse add. Kept only as this benchmark's "before"."""
    a, c = step_size, pseudocount
    for theta, table in ((hmm.initial, counts.initial + c), (hmm.transition,
                                                             counts.transition + c)):
        theta.lerp_(table / table.sum(-1, keepdim=True), a)
    norm = counts.state_totals + hmm.vocab_size * c  # [P_B, H]
    hmm.emission.lerp_((c / norm).unsqueeze(1), a)  # the pass over the whole table
    row_scale = (a / norm).index_select(0, counts.emission_rows // hmm.vocab_size)
    hmm.emission.view(-1, hmm.num_states).index_add_(
        0, counts.emission_rows, counts.emission_values * row_scale)


def si(value: float | None, unit: str = "") -> str:
    """1.23e9 -> '1.23 G' (+ unit); None -> '-'."""
    if value is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def percent(fraction: float) -> str:
    """0.4213 -> '42%', 0.0123 -> '1.2%'."""
    value = 100 * fraction
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


def parse_bench_args(p: argparse.ArgumentParser, argv: Sequence[str] | None, section: str,
                     seed_help: str = "seed of the model and the data (default 0)"
                     ) -> argparse.Namespace:
    """Add the flags every benchmark has (``--seed``, ``--write`` into ``section`` of a
    markdown file), parse ``argv`` and resolve ``--device`` (an argparse error if it is not
    usable)."""
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--write", type=Path, default=None, metavar="MARKDOWN",
                   help=f"also write the report into this file's {section} section")
    args = p.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except DataError as exc:
        p.error(str(exc))
    return args


# ----- circuits: issue 15's starting point, for before/after in one run -----------------------
def legacy_safe_log(values: torch.Tensor) -> torch.Tensor:
    """``safe_log`` as it was (commit 7f743a3): two masks and two filled temporaries per call."""
    positive = values > 0
    logs = torch.log(torch.where(positive, values, torch.ones_like(values)))
    return torch.where(positive, logs, torch.full_like(values, float("-inf")))


def legacy_exp_shifted(log_values: torch.Tensor, dim: int = -1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp_shifted`` as it was (commit 7f743a3)."""
    shift = log_values.detach().amax(dim=dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(log_values - shift), shift


LEGACY = {"safe_log": legacy_safe_log, "exp_shifted": legacy_exp_shifted}


@contextmanager
def legacy_circuit_kernels() -> Iterator[None]:
    """Run the circuit layers with the log-space primitives they had before issue 15's
    optimisations (swapped in every module that imported them, restored on exit), so
    ``bench_pc.py`` times the method before and after in the same run."""
    modules = [importlib.import_module(f"hmmlvd.pc.{name}") for name in
               ("logspace", "layers.hadamard", "layers.einsum", "layers.categorical")]
    saved = [(m, name, getattr(m, name)) for m in modules for name in LEGACY if hasattr(m, name)]
    try:
        for module, name, _ in saved:
            setattr(module, name, LEGACY[name])
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
