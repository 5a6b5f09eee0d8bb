"""Helpers the benchmark scripts share (``scripts/bench_hmm.py``, ``bench_pc.py``,
``bench_gpu.py``): median wall time with CUDA synchronisation, the matmul rate every speed
target is a fraction of, peak memory, seeded random windows, the HMM's timed forward and EM
step (the M-step as it is and as it was before lazy emission scaling), number formatting, the
flags every benchmark shares, and a circuit's EM step timed with the library of an earlier git
revision (a before/after in one run). It lives beside the benchmarks, outside the installed
package: the scripts import it as ``benchlib`` (their own folder is first on ``sys.path``).
Targets live in the scripts as ratios measured in one run, never in tests."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hmmlvd.core.allocator import ENVIRONMENT
from hmmlvd.core.device import resolve_device
from hmmlvd.core.errors import DataError
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


def time_forward(hmm: HMM, x: torch.Tensor, repeats: int, warmup: int,
                 dtype: torch.dtype = torch.float32) -> float:
    """Median seconds of the forward pass over ``x`` (``hmm.log_likelihood(x)``, its matmuls
    in ``dtype``)."""
    with torch.no_grad():
        return median_seconds(lambda: hmm.run_forward(x, dtype), hmm.device, repeats, warmup)


def time_em_step(hmm: HMM, x: torch.Tensor, repeats: int, warmup: int, step_size: float,
                 pseudocount: float, dense: bool = False,
                 dtype: torch.dtype = torch.float32) -> float:
    """Median seconds of one mini-batch EM step (E-step in ``dtype`` + M-step; updates
    ``hmm`` in place): with the emission table held scaled across steps as ``train`` does, or
    (``dense``) with the dense M-step that rewrites the whole table."""
    scaled = ScaledEmission(hmm)

    def step() -> None:
        if dense:
            dense_maximize(hmm, expected_counts(hmm, x, dtype=dtype), step_size, pseudocount)
        else:
            maximize(hmm, expected_counts(hmm, x, scaled, dtype), step_size, pseudocount,
                     scaled)

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


# ----- circuits: the EM step of an earlier revision, for before/after in one run ------------
#: The circuit code before its optimisations: the baseline of the before/after timings.
BEFORE_REVISION = "7f743a3"

#: Runs in a child process whose ``hmmlvd`` is the exported revision; uses only the API every
#: revision has (RegionGraph, Partition, Circuit, em_step); the graph comes as
#: ``RegionGraph.to_dict()``. argv: spec.json batches.npy
_TIMER = """
import json, statistics, sys, time
import numpy as np, torch
import hmmlvd
from hmmlvd.pc import Circuit, em_step
from hmmlvd.pc.structures import Partition, RegionGraph
spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
g = spec["graph"]
graph = RegionGraph(g["num_variables"], tuple(tuple(r) for r in g["regions"]),
                    tuple(Partition(tuple(p), tuple(tuple(c) for c in cs))
                          for p, cs in g["partitions"]))
circuit = Circuit(graph, **spec["circuit"]).to(spec["device"])
batches = torch.from_numpy(np.load(sys.argv[2])).to(spec["device"])
sync = torch.cuda.synchronize if spec["device"].startswith("cuda") else (lambda: None)
times, values = [], []
for i in range(spec["warmup"] + spec["repeats"]):
    start = time.perf_counter()
    values.append(em_step(circuit, batches[i % len(batches)], spec["step_size"],
                          spec["pseudocount"]))
    sync()
    if i >= spec["warmup"]:
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "log_likelihoods": values,
                  "package": hmmlvd.__file__}))
"""


#: glibc's malloc set as :func:`hmmlvd.core.allocator.keep_freed_memory` sets it, through the
#: environment: an earlier revision timed with it shows what the kernels alone gained.
SAME_MALLOC = dict(ENVIRONMENT)


def export_revision(revision: str, directory: Path) -> Path:
    """The ``hmmlvd`` package of git ``revision`` of this checkout, written under
    ``directory`` (a folder to put first on PYTHONPATH); DataError if that is impossible."""
    root = Path(__file__).resolve().parents[1]
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", revision, "hmmlvd"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise DataError(f"cannot export revision {revision} of {root} (a git clone with its "
                        f"history is needed; --no-before skips it): "
                        f"{detail.decode(errors='replace').strip() or exc}") from exc
    return directory


def em_step_at_revision(revision_dir: Path, graph: dict, circuit: dict,
                        batches: torch.Tensor, step_size: float, pseudocount: float,
                        repeats: int, warmup: int, threads: int, device: torch.device,
                        environment: dict[str, str] | None = None
                        ) -> tuple[float, list[float]]:
    """Median seconds of one ``em_step`` of a circuit, timed in a child process running the
    ``hmmlvd`` exported to ``revision_dir`` (:func:`export_revision`), on ``batches``
    [N, B, D] taken in turn, as :func:`median_seconds` times the current code. ``graph``:
    ``RegionGraph.to_dict()`` (rebuilt without ``from_dict``, which older revisions lack);
    ``circuit``: Circuit keyword arguments; ``environment``: extra environment variables of
    the child (e.g. :data:`SAME_MALLOC`). Returns the seconds and the mean log-likelihood every
    step returned (warm-up included), to check that both revisions compute the same thing."""
    spec = {"graph": graph, "circuit": circuit, "step_size": step_size,
            "pseudocount": pseudocount, "repeats": repeats, "warmup": warmup,
            "threads": threads, "device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        np.save(Path(tmp) / "batches.npy", batches.cpu().numpy())
        env = {**os.environ, **(environment or {}), "PYTHONPATH": str(revision_dir)}
        # run in ``tmp``: ``python -c`` puts the working folder first on sys.path, which
        # must not hold another hmmlvd
        done = subprocess.run([sys.executable, "-c", _TIMER, "spec.json", "batches.npy"],
                              env=env, cwd=tmp, capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"timing the earlier revision failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["package"]).resolve().is_relative_to(Path(revision_dir).resolve()):
        raise DataError(f"the child process imported {result['package']}, not the hmmlvd "
                        f"of {revision_dir}")
    return float(result["seconds"]), [float(v) for v in result["log_likelihoods"]]
