"""Peak memory of HMM EM at large H against the memory model (``hmmlvd.hmm.memory``).

Each (H, batch, kind, dtype) runs in a fresh child process (so that one peak does not hide
another): a model of H states over V = 33,278 words and T = 32 (random parameters), then two
mini-batch EM steps with the emission table held scaled (what ``train`` runs) or one
full-batch epoch over one batch (chunked E-steps into the count accumulator, then the in-place
M-step). The child reports its peak resident set size (``ru_maxrss``) and the estimate
``training_estimate`` gives for it; the table shows both and whether the peak stays under the
budget (16 GB by default: training at H = 1024 on all windows must fit a 24 GB machine).

    python scripts/bench_hmm_memory.py --hidden-states 1024 --batch-size 16384 \\
        --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hmmlvd.core.device import DTYPE_NAMES
from hmmlvd.core.report import provenance, write_section

SECTION = "bench_hmm_memory"
VOCAB = 33278
LENGTH = 32

CHILD = r"""
import json, resource, sys, time
import torch
from hmmlvd.core.allocator import keep_freed_memory
from hmmlvd.core.device import resolve_dtype
from hmmlvd.hmm import HMM
from hmmlvd.hmm.em import CountAccumulator, ScaledEmission, expected_counts, maximize
from hmmlvd.hmm.memory import chunk_windows, training_estimate

h, batch, kind, dtype_name, vocab, length, threads = sys.argv[1:8]
h, batch, vocab, length, threads = int(h), int(batch), int(vocab), int(length), int(threads)
torch.set_num_threads(threads)
keep_freed_memory()
dtype = resolve_dtype(dtype_name, "cpu")
hmm = HMM(h, vocab, length, seed=0)
x = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
started = time.perf_counter()
if kind == "mini-batch":
    scaled = ScaledEmission(hmm)
    for _ in range(2):
        maximize(hmm, expected_counts(hmm, x, scaled, dtype), 0.3, 1e-4, scaled)
    scaled.materialise()
else:
    acc = CountAccumulator(hmm)
    for piece in x.split(chunk_windows(h, length)):
        acc.add(expected_counts(hmm, piece, dtype=dtype))
    maximize(hmm, acc.total(), 1.0, 1e-4)
seconds = time.perf_counter() - started
estimate = training_estimate(hmm.config, batch, full_batch=kind == "full-batch",
                             dtype=dtype, mini_batch=kind == "mini-batch")
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "estimate": estimate.total, "parameters": estimate.parameters,
                  "seconds": seconds, "dtype": str(dtype).removeprefix("torch.")}))
"""


def measure(h: int, batch: int, kind: str, dtype: str, threads: int) -> dict:
    """One child process's peak and estimate (see the module docstring)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(h), str(batch), kind, dtype,
                           str(VOCAB), str(LENGTH), str(threads)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"bench_hmm_memory: error: H={h} {kind} failed: "
                         f"{done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], budget: float) -> str:
    lines = ["| H | batch | epoch kind | E-step dtype | parameters | estimate | peak RSS | "
             "peak / estimate | under budget | seconds |",
             "|---:|---:|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['h']} | {r['batch']:,} | {r['kind']} | {r['dtype']} | "
                     f"{r['parameters'] / 1e9:.2f} GB | {r['estimate'] / 1e9:.2f} GB | "
                     f"{r['peak'] / 1e9:.2f} GB | {r['peak'] / r['estimate']:.2f} | "
                     f"{'yes' if r['peak'] <= budget * 1e9 else 'NO'} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-states", type=int, nargs="+", default=[1024])
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="auto")
    p.add_argument("--kinds", nargs="+", choices=["mini-batch", "full-batch"],
                   default=["mini-batch", "full-batch"])
    p.add_argument("--budget-gb", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", default=None, help="record the table in this markdown file")
    args = p.parse_args(argv)
    rows = []
    for h in args.hidden_states:
        for kind in args.kinds:
            result = measure(h, args.batch_size, kind, args.dtype, args.threads)
            rows.append({"h": h, "batch": args.batch_size, "kind": kind, **result})
            print(f"H={h} {kind}: peak {result['peak'] / 1e9:.2f} GB, estimate "
                  f"{result['estimate'] / 1e9:.2f} GB", file=sys.stderr)
    printed = table(rows, args.budget_gb)
    print(printed)
    if args.write:
        body = "\n".join([provenance("HMM training memory (`scripts/bench_hmm_memory.py`)",
                                     torch.device("cpu")), "",
                          "V = 33,278, T = 32, random parameters; mini-batch: two EM steps with "
                          "the emission table held scaled; full-batch: one batch's chunked "
                          "E-steps into the count accumulator and the in-place M-step. Peak = "
                          "the child process's peak resident set size; estimate = "
                          "`hmmlvd.hmm.memory.training_estimate` (what training checks before "
                          f"its first batch); budget {args.budget_gb:g} GB.", "", printed])
        write_section(Path(args.write), SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
