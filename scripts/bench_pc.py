"""Seconds per epoch of mini-batch EM for probabilistic circuits on 28x28 images.

What it measures, for each (input, structure, K) row, on one device:

- **structures**: Poon–Domingos (``poon_domingos(S, S, delta)``, einsum layers) and hidden
  Chow–Liu trees (``learn_hclt``: the Chow–Liu tree of a subset of the training images,
  Hadamard layers, rooted at the tree's centre to keep it shallow);
- **inputs**: MNIST with 256 grey levels (categorical, 256 categories) and binarised MNIST
  (Bernoulli, pixel > 127). The Chow–Liu tree of the 256-level data is learned on the pixels
  binned into ``--tree-bins`` levels (pairwise mutual information of 256-category variables
  would need [64*256, 784*256] float64 blocks, 24.5 GiB); the binarised one on the 0/1 data;
- **EM step**: one ``em_step`` (E-step by autograd + M-step) on a batch of B images, the
  median of ``--repeats`` runs after ``--warmup`` untimed ones (``torch.cuda.synchronize`` on
  cuda), each run on a different batch. Seconds per epoch are *implied*: step time x 60,000 /
  B (one M-step per batch, as ``fit_em`` does), not a measured epoch;
- **FLOP/s** as a fraction of the float32 matmul rate measured in the same run: the peak (a
  2048^3 ``torch.mm``, ``--peak-size``) and a matmul of the layer's own shape ([B, K^2] x
  [K^2, K] for einsum, [B, K] x [K, K] for Hadamard, one per partition / edge, back to back);
- **PyJuice**: with ``--device cuda`` and ``pyjuice`` importable, the same step for PyJuice's
  HCLT with the same K (``pyjuice.structures.HCLT``, ``juice.compile``, forward, backward,
  ``mini_batch_em``; PyJuice learns its own tree from the same images), and our time / theirs.

FLOP convention (``circuit_flops``): only the sum layers' contractions are counted. Forward:
an einsum layer with P partitions costs 2*B*P*K^3 (contraction with the K x K x K weights) +
2*B*P*K^2 (the outer product of the two children); a Hadamard layer with E edges (non-first
children) costs 2*B*E*K^2. Input, mixing and root layers, exp/log and the element-wise
products are not counted. The backward pass counts 2x the forward (a gradient w.r.t. both
operands of every contraction), so an EM step counts 3x the forward; the M-step is not
counted (it is O(parameters), independent of B).

Run::

    python scripts/bench_pc.py                                # defaults, cuda if present
    python scripts/bench_pc.py --device cpu --pd-sizes 8 --hclt-sizes 16 --inputs bernoulli
    python scripts/bench_pc.py --profile hclt:32              # also torch.profiler of one step
    python scripts/bench_pc.py --write docs/results.md        # also record the table

``--write`` replaces the section between ``<!-- bench_pc:begin -->`` and
``<!-- bench_pc:end -->`` in that file (appending it if absent) with the table, the exact
command line, the machine and the date.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hmmlvd.core.allocator import keep_freed_memory
from hmmlvd.core.errors import DataError
from hmmlvd.core.report import device_name, provenance, write_section
from hmmlvd.pc import Circuit, em_step, poon_domingos
from hmmlvd.pc.layers import EinsumLayer, HadamardLayer
from hmmlvd.pc.structures import RegionGraph, learn_hclt

from benchlib import (
    BEFORE_REVISION,
    SAME_MALLOC,
    em_step_at_revision,
    export_revision,
    matmul_rate,
    median_seconds,
    parse_bench_args,
    percent,
    si,
    synchronize,
)

SECTION = "bench_pc"
SQUARE_SIZE = 2048
EPOCH_IMAGES = 60_000
STRUCTURES = ("pd", "hclt")
INPUTS = ("categorical", "bernoulli")
PRODUCT = {"pd": "einsum", "hclt": "hadamard"}
THRESHOLD = 127  # binarised pixel = grey level > 127
PYJUICE_REFERENCE = ("PyJuice's README reports HCLT with 89K nodes (2.56M edges) at 0.8 s per "
                     "epoch of 60K samples on an RTX 4090: a published reference, not our "
                     "measurement (their node count convention may differ from ours).")


# ----- FLOPs --------------------------------------------------------------------------------
def circuit_flops(circuit: Circuit, batch_size: int) -> dict[str, float]:
    """FLOPs of one forward pass and of one EM step (forward + backward = 3x forward) on a
    batch of ``batch_size``, counted from the circuit's sum layers (see the module docstring).
    Returns ``{"forward": ..., "em_step": ...}``."""
    b, k = batch_size, circuit.num_units
    forward = 0.0
    for layer in circuit.layers:
        if isinstance(layer, EinsumLayer):
            p = len(layer.left)
            forward += 2.0 * b * p * k**3 + 2.0 * b * p * k**2
        elif isinstance(layer, HadamardLayer):
            forward += 2.0 * b * len(layer.edge_child) * k**2
        else:  # pragma: no cover - Circuit builds only these two
            raise TypeError(f"no FLOP count for {type(layer).__name__}")
    return {"forward": forward, "em_step": 3.0 * forward}


def contraction_shape(circuit: Circuit) -> tuple[int, int, int]:
    """(inner size, output size, count) of the circuit's contractions: [B, K^2] x [K^2, K] per
    partition (einsum) or [B, K] x [K, K] per edge (Hadamard)."""
    k = circuit.num_units
    if circuit.product == "einsum":
        return k * k, k, sum(len(layer.left) for layer in circuit.layers)
    return k, k, sum(len(layer.edge_child) for layer in circuit.layers)


# ----- data and structures ------------------------------------------------------------------
@dataclass
class Images:
    """Flattened images [N, S*S] (uint8 grey levels) and where they came from."""

    pixels: np.ndarray
    size: int
    source: str  # "MNIST (path)" or a note on random pixels
    random: bool


def load_images(args: argparse.Namespace) -> Images:
    """MNIST train images from ``--data-dir``, or seeded random pixels (``--random-data``, a
    non-28 ``--image-size``, or a missing folder, with a note on stderr)."""
    size = args.image_size
    reason = None
    if args.random_data:
        reason = "--random-data"
    elif size != 28:
        reason = f"--image-size {size} (MNIST is 28x28)"
    elif not Path(args.data_dir).is_dir():
        reason = f"MNIST folder {args.data_dir} is missing"
    if reason is None:
        from hmmlvd.data.images import flatten, load_mnist

        try:
            pixels = flatten(load_mnist(args.data_dir).train).astype(np.uint8)
            return Images(pixels, size, f"MNIST train images from {args.data_dir}", False)
        except DataError as exc:
            reason = f"MNIST could not be read ({exc})"
    print(f"NOTE: using uniform random pixels instead of MNIST: {reason}. Timings do not "
          "depend on pixel values, but the Chow–Liu trees are arbitrary.", file=sys.stderr)
    count = max(args.tree_images, args.batch_size * (args.warmup + args.repeats))
    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 256, size=(count, size * size), dtype=np.uint8)
    return Images(pixels, size, f"uniform random {size}x{size} pixels ({reason})", True)


def as_input(pixels: np.ndarray, kind: str) -> np.ndarray:
    """uint8 grey levels -> int64 values of the input kind (categories 0..255, or 0/1)."""
    if kind == "bernoulli":
        return (pixels > THRESHOLD).astype(np.int64)
    return pixels.astype(np.int64)


def hclt_graph(pixels: np.ndarray, kind: str, args: argparse.Namespace
               ) -> tuple[RegionGraph, float]:
    """The HCLT region graph (:func:`hmmlvd.pc.structures.learn_hclt`) of the first
    ``--tree-images`` images, 256 levels binned to ``--tree-bins`` for the mutual information,
    and the seconds it took."""
    subset = as_input(pixels[: args.tree_images], kind)
    categorical = kind != "bernoulli"
    started = time.perf_counter()
    graph = learn_hclt(subset, 256 if categorical else 2,
                       bins=args.tree_bins if categorical else None)
    return graph, time.perf_counter() - started


def build_circuit(structure: str, kind: str, k: int, graph: RegionGraph,
                  args: argparse.Namespace) -> Circuit:
    extra = {"num_categories": 256} if kind == "categorical" else {}
    circuit = Circuit(graph, k, input=kind, product=PRODUCT[structure], seed=args.seed, **extra)
    return circuit.to(args.device)


# ----- timing -------------------------------------------------------------------------------
def batch_cycle(x: torch.Tensor, batch_size: int) -> Callable[[], torch.Tensor]:
    """A function returning consecutive batches of ``x`` (on its device), wrapping around."""
    count = max(1, len(x) // batch_size)
    state = {"next": 0}

    def next_batch() -> torch.Tensor:
        i = state["next"] % count
        state["next"] += 1
        return x[i * batch_size:(i + 1) * batch_size]

    return next_batch


@dataclass
class Row:
    structure: str
    input: str
    k: int
    nodes: int
    parameters: int
    layers: int
    step_seconds: float
    flops: float  # per EM step
    shape_rate: float  # FLOP/s of a matmul of the circuit's contraction shape
    before_seconds: float | None = None  # the same EM step at --before-revision
    before_same_malloc: float | None = None  # ... with malloc set as the library now sets it
    pyjuice_seconds: float | None = None
    pyjuice_note: str = ""


def time_em_step(circuit: Circuit, x: torch.Tensor, args: argparse.Namespace,
                 values: list[float] | None = None) -> float:
    """Median seconds of one ``em_step`` on a batch of ``args.batch_size``; ``values``
    collects the mean log-likelihood of every step (warm-up included)."""
    next_batch = batch_cycle(x, args.batch_size)
    values = [] if values is None else values
    return median_seconds(lambda: values.append(em_step(circuit, next_batch(), args.step_size,
                                                        args.pseudocount)),
                          args.device, args.repeats, args.warmup)


def bench_row(structure: str, kind: str, k: int, graph: RegionGraph, x: torch.Tensor,
              args: argparse.Namespace, progress: tqdm) -> Row:
    progress.set_postfix_str(f"{structure} {kind} K={k}: build")
    circuit = build_circuit(structure, kind, k, graph, args)
    before = same_malloc = None
    settings = {"num_units": k, "input": kind, "product": PRODUCT[structure], "seed": args.seed,
                **({"num_categories": 256} if kind == "categorical" else {})}
    next_batch = batch_cycle(x, args.batch_size)
    taken = torch.stack([next_batch() for _ in range(args.warmup + args.repeats)])
    times: dict[str, list[float]] = {"now": [], "before": [], "same": []}
    # rounds alternate now / before / before with the same malloc, so that a slow drift of
    # the machine's speed (other tenants) reaches all three alike; each is the median
    for round_ in range(args.rounds if args.before_dir is not None else 1):
        progress.set_postfix_str(f"{structure} {kind} K={k}: EM step, round {round_ + 1}")
        values: list[float] = []
        times["now"].append(time_em_step(circuit, x, args, values))
        if args.before_dir is None:
            continue
        progress.set_postfix_str(f"{structure} {kind} K={k}: EM step before, round "
                                 f"{round_ + 1}")
        for key, environment in (("before", None), ("same", SAME_MALLOC)):
            seconds, earlier = em_step_at_revision(
                args.before_dir, graph.to_dict(), settings, taken, args.step_size,
                args.pseudocount, args.repeats, args.warmup, torch.get_num_threads(),
                args.device, environment)
            times[key].append(seconds)
            if round_ == 0 and not math.isclose(values[0], earlier[0], rel_tol=1e-4):
                raise SystemExit(f"bench_pc.py: error: {structure} {kind} K={k}: the first EM "
                                 f"step's log-likelihood is {values[0]:.6g} now but "
                                 f"{earlier[0]:.6g} at {args.before_revision}; the two do "
                                 "not compute the same step")
    seconds = statistics.median(times["now"])
    if args.before_dir is not None:
        before, same_malloc = statistics.median(times["before"]), statistics.median(times["same"])
    progress.set_postfix_str(f"{structure} {kind} K={k}: matmul")
    inner, out, count = contraction_shape(circuit)
    rate = matmul_rate(args.batch_size, inner, out, count, args.device, args.repeats,
                       args.warmup)
    row = Row(structure, kind, k, sum(circuit.num_nodes().values()), circuit.num_parameters(),
              len(circuit.layers), seconds, circuit_flops(circuit, args.batch_size)["em_step"],
              rate, before, same_malloc)
    del circuit
    if structure == "hclt":
        row.pyjuice_seconds, row.pyjuice_note = bench_pyjuice(kind, k, x, args, progress)
    return row


# ----- PyJuice ------------------------------------------------------------------------------
def pyjuice_status(device: torch.device) -> str | None:
    """None when PyJuice can be timed, else why not (the table cell)."""
    if device.type != "cuda":
        return "n/a (no GPU)"
    try:
        import pyjuice  # noqa: F401
    except ImportError:
        return "n/a (pyjuice not installed)"
    return None


def bench_pyjuice(kind: str, k: int, x: torch.Tensor, args: argparse.Namespace,
                  progress: tqdm) -> tuple[float | None, str]:
    """Median seconds of one PyJuice mini-batch EM step on its HCLT with K latents (its tree
    learned from the same ``--tree-images`` images), or (None, why not)."""
    status = pyjuice_status(args.device)
    if status is not None:
        return None, status
    import pyjuice as juice
    import pyjuice.nodes.distributions as dists

    progress.set_postfix_str(f"pyjuice {kind} K={k}: compile")
    try:
        categories = 2 if kind == "bernoulli" else 256
        root = juice.structures.HCLT(x[: args.tree_images].float(), num_latents=k,
                                     input_dist=dists.Categorical(num_cats=categories))
        pc = juice.compile(root)
        pc.to(args.device)
        next_batch = batch_cycle(x, args.batch_size)

        def step() -> None:
            pc.init_param_flows(flows_memory=0.0)
            lls = pc(next_batch())
            lls.mean().backward()
            pc.mini_batch_em(step_size=args.step_size, pseudocount=args.pseudocount)

        progress.set_postfix_str(f"pyjuice {kind} K={k}: EM step")
        seconds = median_seconds(step, args.device, args.repeats, args.warmup)
        nodes = getattr(pc, "num_nodes", None)
        return seconds, (f"{nodes:,} nodes" if isinstance(nodes, int) else "")
    except Exception as exc:  # a third-party failure must not lose our own rows
        return None, f"error: {type(exc).__name__}: {str(exc)[:80]}"


def make_graph(structure: str, kind: str, images: Images, args: argparse.Namespace
               ) -> tuple[RegionGraph, str]:
    """The region graph of a structure (HCLT: learned from ``kind`` data) and a note on it."""
    if structure == "pd":
        graph = poon_domingos(images.size, images.size, delta=args.delta)
        return graph, (f"PD delta={args.delta}: {len(graph.regions)} regions, "
                       f"{len(graph.partitions)} partitions")
    graph, seconds = hclt_graph(images.pixels, kind, args)
    bins = "0/1 pixels" if kind == "bernoulli" else f"pixels binned to {args.tree_bins} levels"
    return graph, (f"HCLT {kind}: Chow–Liu tree of the first {args.tree_images} images "
                   f"({bins}) in {seconds:.1f} s, rooted at its centre")


class Graphs:
    """Region graphs built on first use (PD once; HCLT once per input kind), with notes."""

    def __init__(self, images: Images, args: argparse.Namespace):
        self.images, self.args = images, args
        self.graphs: dict[tuple[str, str], RegionGraph] = {}
        self.notes: list[str] = []

    def get(self, structure: str, kind: str) -> RegionGraph:
        key = (structure, "any" if structure == "pd" else kind)
        if key not in self.graphs:
            self.graphs[key], note = make_graph(structure, kind, self.images, self.args)
            self.notes.append(note)
        return self.graphs[key]


def profile_step(spec: str, graphs: Graphs, x: torch.Tensor, kind: str,
                 args: argparse.Namespace) -> str:
    """torch.profiler table (top ``--profile-rows`` ops by self CPU time, self CUDA time on
    cuda) of one EM step of ``spec`` = structure:K[:input] on the batch ``x``."""
    structure, k = spec.split(":")[:2]
    circuit = build_circuit(structure, kind, int(k), graphs.get(structure, kind), args)
    for _ in range(max(1, args.warmup)):
        em_step(circuit, x, args.step_size, args.pseudocount)
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if args.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    with torch.profiler.profile(activities=activities) as prof:
        em_step(circuit, x, args.step_size, args.pseudocount)
        synchronize(args.device)
    title = f"torch.profiler, one EM step of {structure} {kind} K={k}, B={len(x)}:"
    return title + "\n" + prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows)


# ----- report -------------------------------------------------------------------------------
def pyjuice_cells(row: Row, batch_size: int) -> tuple[str, str]:
    """The PyJuice s/epoch and ratio cells of a row."""
    if row.structure != "hclt":
        return "-", "-"
    if row.pyjuice_seconds is None:
        return row.pyjuice_note, "-"
    epoch = row.pyjuice_seconds * EPOCH_IMAGES / batch_size
    note = f" ({row.pyjuice_note})" if row.pyjuice_note else ""
    return f"{epoch:.3g}{note}", f"{row.step_seconds / row.pyjuice_seconds:.3g}x"


def table(rows: Sequence[Row], peak: float, batch_size: int) -> str:
    """The rows as a markdown table."""
    columns = ["structure", "input", "K", "nodes", "parameters", "layers",
               f"EM step (s, B={batch_size})", "EM step before (s)", "speedup",
               "before, same malloc (s)", "speedup, same malloc",
               f"s/epoch (= step x 60000/{batch_size})", "FLOP/s", "% of peak matmul",
               "% of same-shape matmul", "PyJuice s/epoch", "ours / PyJuice"]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "---|" * 2 + "---:|" * (len(columns) - 2)]
    for r in rows:
        achieved = r.flops / r.step_seconds
        epoch = r.step_seconds * EPOCH_IMAGES / batch_size
        pj, ratio = pyjuice_cells(r, batch_size)
        before, speedup, same, same_speedup = ["-"] * 4
        if r.before_seconds is not None:
            before = f"{r.before_seconds:.3g}"
            speedup = f"{r.before_seconds / r.step_seconds:.2f}x"
            same = f"{r.before_same_malloc:.3g}"
            same_speedup = f"{r.before_same_malloc / r.step_seconds:.2f}x"
        cells = [r.structure.upper(), r.input, str(r.k), f"{r.nodes:,}", f"{r.parameters:,}",
                 str(r.layers), f"{r.step_seconds:.3g}", before, speedup, same, same_speedup,
                 f"{epoch:.3g}",
                 si(achieved),
                 percent(achieved / peak), percent(achieved / r.shape_rate), pj, ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header_line(args: argparse.Namespace, peak: float) -> str:
    return (f"device: {args.device} ({device_name(args.device)}) | torch {torch.__version__} | "
            f"threads: {torch.get_num_threads()} | batch size: {args.batch_size} | "
            f"image: {args.image_size}x{args.image_size} | EM step size {args.step_size}, "
            f"pseudocount {args.pseudocount} | peak matmul ({args.peak_size}^3 float32): "
            f"{si(peak, 'FLOP/s')}")


def notes(args: argparse.Namespace, images: Images, graph_notes: Sequence[str]) -> list[str]:
    """Lines under the table: data, structures, how things were counted, load, PyJuice."""
    out = [f"Data: {images.source}; binarised = grey level > {THRESHOLD}.",
           *[f"Structure: {n}." for n in graph_notes],
           f"EM step = `em_step` (forward + backward by autograd + M-step), median of "
           f"{args.repeats} runs after {args.warmup} warm-up, each on a different batch; "
           f"s/epoch is implied (step time x 60,000 / B), not a measured epoch. EM step before "
           f"= the same step (same structure, seed and batches) with the library as it was at "
           f"commit {args.before_revision} (the circuit code before its optimisations; `git "
           "archive` of that revision, timed in a child process in this run: `benchlib."
           "em_step_at_revision`); speedup = before / now; now, before and before with the "
           f"same malloc are timed in {args.rounds} alternating rounds, medians shown. Same "
           "malloc: the earlier revision timed again with glibc's malloc set (no mmap, no "
           "trimming, through MALLOC_*_ environment variables) as the training pipelines set "
           "it "
           "(`hmmlvd.core.allocator.keep_freed_memory`, which this run applies too): what the "
           "kernels alone gained.",
           "FLOPs: einsum layer 2*B*P*K^3 + 2*B*P*K^2, Hadamard layer 2*B*E*K^2 (P partitions, "
           "E edges) forward, EM step = 3x forward (backward 2x); input, mixing and root "
           "layers not counted. Same-shape matmul: [B,K^2]x[K^2,K] (einsum) or [B,K]x[K,K] "
           "(Hadamard) float32 torch.mm, once per partition / edge, back to back.",
           "nodes = Circuit.num_nodes() summed (input components, products, sums); parameters "
           "= Circuit.num_parameters() (sum weights + input distributions)."]
    if args.load_average is not None:
        out.append(f"Load average when the run started: {args.load_average:.2f} "
                   f"({os.cpu_count()} CPUs); other processes' load skews timings.")
    status = pyjuice_status(args.device)
    if status is None:
        out.append("PyJuice: its HCLT (pyjuice.structures.HCLT, own tree from the same images) "
                   "with the same K and batch size, init_param_flows + forward + backward + "
                   "mini_batch_em, timed the same way; ours / PyJuice = ratio of step times.")
    else:
        out.append(f"PyJuice: {status.removeprefix('n/a ').strip('()')}, not timed. "
                   + PYJUICE_REFERENCE)
    return out


def section_body(printed: str, args: argparse.Namespace) -> str:
    return "\n".join([provenance("Probabilistic-circuit EM throughput (`scripts/bench_pc.py`)",
                                 args.device), "", printed])


# ----- command line -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"),
                   help="folder with the MNIST IDX files (default ../shared/data/mnist)")
    p.add_argument("--random-data", action="store_true",
                   help="time on seeded random pixels instead of MNIST")
    p.add_argument("--image-size", type=int, default=28,
                   help="side S of the square images (default 28; not 28 implies random data)")
    p.add_argument("--structures", nargs="+", choices=STRUCTURES, default=list(STRUCTURES))
    p.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    p.add_argument("--pd-sizes", type=int, nargs="+", default=[8, 16, 32], metavar="K",
                   help="K of the PD circuits (default 8 16 32)")
    p.add_argument("--hclt-sizes", type=int, nargs="+", default=[16, 32, 64], metavar="K",
                   help="K of the HCLT circuits (default 16 32 64)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="K",
                   help="K of every structure (overrides --pd-sizes and --hclt-sizes)")
    p.add_argument("--delta", type=int, nargs="+", default=None,
                   help="PD split steps (default S // 4: 7 for 28x28, EiNet's MNIST setting)")
    p.add_argument("--tree-images", type=int, default=2000,
                   help="images the Chow–Liu trees are learned from (default 2000)")
    p.add_argument("--tree-bins", type=int, default=8,
                   help="grey-level bins for the 256-level Chow–Liu tree (default 8)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per EM step B (default 512 on cpu, 2048 on cuda)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--before-revision", default=BEFORE_REVISION, metavar="REV",
                   help="git revision whose EM step is timed beside today's (speedup; default "
                        f"{BEFORE_REVISION}, the circuit code before its optimisations)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (now, before, before with the same malloc) timings, "
                        "alternated; medians reported (default 3)")
    p.add_argument("--no-before", dest="before", action="store_false",
                   help="skip timing the EM step at --before-revision")
    p.add_argument("--step-size", type=float, default=0.1, help="EM step size (default 0.1)")
    p.add_argument("--pseudocount", type=float, default=1e-3,
                   help="M-step pseudocount (default 1e-3)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="cpu or cuda (default cuda if available, else cpu)")
    p.add_argument("--peak-size", type=int, default=SQUARE_SIZE, metavar="N",
                   help=f"N of the N^3 matmul giving the peak rate (default {SQUARE_SIZE})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--profile", nargs="?", const="hclt:32", default=None,
                   metavar="STRUCTURE:K[:INPUT]",
                   help="also print torch.profiler's top ops of one EM step (default hclt:32)")
    p.add_argument("--profile-rows", type=int, default=8,
                   help="ops listed by --profile (default 8)")
    args = parse_bench_args(p, argv, SECTION, "seed of circuits and random data")
    if args.batch_size is None:
        args.batch_size = 2048 if args.device.type == "cuda" else 512
    if args.sizes is not None:
        args.pd_sizes = args.hclt_sizes = args.sizes
    if args.delta is None:
        args.delta = [max(1, args.image_size // 4)]
    for name in ("image_size", "tree_images", "batch_size", "repeats", "profile_rows",
                 "peak_size", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 2 <= args.tree_bins <= 256:
        p.error("--tree-bins must be in 2..256")
    if min(args.pd_sizes + args.hclt_sizes + args.delta) < 1 or args.warmup < 0:
        p.error("sizes and --delta must be >= 1, --warmup >= 0")
    if args.profile is not None:
        parts = args.profile.split(":")
        if (len(parts) not in (2, 3) or parts[0] not in STRUCTURES or not parts[1].isdigit()
                or (len(parts) == 3 and parts[2] not in INPUTS)):
            p.error(f"--profile takes STRUCTURE:K[:INPUT], e.g. hclt:32, got {args.profile!r}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()  # as the training pipelines do
    args.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    images = load_images(args)
    if len(images.pixels) < args.batch_size:
        raise SystemExit(f"only {len(images.pixels)} images for a batch of {args.batch_size}")
    graphs = Graphs(images, args)
    args.before_dir = None
    if args.before:
        export = tempfile.TemporaryDirectory()
        try:
            args.before_dir = export_revision(args.before_revision, Path(export.name))
        except DataError as exc:
            raise SystemExit(f"bench_pc.py: error: {exc}") from None
    need = args.batch_size * (args.warmup + args.repeats)
    data: dict[str, torch.Tensor] = {}

    def batches(kind: str) -> torch.Tensor:
        if kind not in data:
            data[kind] = torch.as_tensor(as_input(images.pixels[:need], kind)).to(args.device)
        return data[kind]

    n = args.peak_size
    peak = matmul_rate(n, n, n, 1, args.device, args.repeats, args.warmup)
    plan = [(kind, s, k) for kind in args.inputs for s in args.structures
            for k in (args.pd_sizes if s == "pd" else args.hclt_sizes)]
    rows: list[Row] = []
    with tqdm(plan, desc="bench_pc", unit="row", file=sys.stderr) as progress:
        for kind, structure, k in progress:
            progress.set_postfix_str(f"{structure} {kind}: structure")
            graph = graphs.get(structure, kind)
            rows.append(bench_row(structure, kind, k, graph, batches(kind), args, progress))
    printed = "\n".join([header_line(args, peak), "", table(rows, peak, args.batch_size), "",
                         *notes(args, images, graphs.notes)])
    print(printed)
    if args.profile is not None:
        parts = args.profile.split(":")
        kind = parts[2] if len(parts) > 2 else args.inputs[0]
        x = batches(kind)[: args.batch_size]
        print("\n" + profile_step(args.profile, graphs, x, kind, args))
    if args.write is not None:
        write_section(args.write, SECTION, section_body(printed, args))
        print(f"wrote the {SECTION} section of {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
