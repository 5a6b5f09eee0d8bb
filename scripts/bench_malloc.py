"""What :func:`hmmlvd.core.allocator.keep_freed_memory` buys: the stage-(c) EM step of an image-LVD
patch circuit (MNIST, 7x7 patches, C latent values, tied inputs, sub-circuits of K units),
timed in two fresh child processes running the same code, one with glibc's malloc as it is
(``HMMLVD_MALLOPT=0``) and one as the EM loop sets it.

For each K: the median seconds of ``--repeats`` EM steps after ``--warmup`` untimed ones (each
on its own batch of B real training images), the minor page faults per timed step, the peak
resident memory of the child, and the speedup (default / kept). Seconds per epoch are implied
(step x 55,000 / B). The sub-circuits' Chow–Liu trees are learned from the real patches of
images grouped at random into the C latent values: the layer shapes of a trained LVD model,
not its parameters (the step's cost does not depend on them).

    python scripts/bench_malloc.py --data-dir ../shared/data/mnist --sizes 16 32 \\
        --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

from hmmlvd.core.report import provenance, write_section

from benchlib import parse_bench_args, si

SECTION = "bench_malloc"
PATCH = 7  # image LVD's default patch side
TRAIN_IMAGES = 55_000


def child(args: argparse.Namespace) -> dict:
    """Build the patch circuit and time its EM steps in this process (run as a child)."""
    import resource
    import time

    import numpy as np
    import torch

    from hmmlvd.core.allocator import keep_freed_memory
    from hmmlvd.data.images import flatten, load_mnist
    from hmmlvd.data.patches import split_patches
    from hmmlvd.image.patch_circuit import PatchCircuit
    from hmmlvd.lvd.image.distill import structures

    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    data = load_mnist(args.data_dir)
    steps = args.warmup + args.repeats
    images = data.train[: max(args.tree_images, steps * args.batch_size)]
    patches = split_patches(images, PATCH)  # [N, n, P], the circuit's variable order
    labels = np.random.default_rng(args.seed).integers(0, args.num_latents,
                                                       patches.shape[:2])
    subs, top = structures(patches[: args.tree_images], labels[: args.tree_images],
                           args.num_latents, 256, 8)
    model = PatchCircuit(images.shape[1:], PATCH, subs, top, args.num_latents, args.size,
                         args.num_latents, seed=args.seed, tie_inputs=True)
    flat = torch.as_tensor(flatten(images))
    times, faults = [], []
    for step in range(steps):
        batch = flat[step * args.batch_size:(step + 1) * args.batch_size]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        model.em_step(batch, 0.1, 1e-3)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"kept": kept, "seconds": statistics.median(times),
            "faults": statistics.median(faults), "params": model.num_parameters(),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(argv: Sequence[str], size: int, mallopt: str) -> dict:
    env = {**os.environ, "HMMLVD_MALLOPT": mallopt}
    done = subprocess.run([sys.executable, __file__, *argv, "--child", str(size)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench_malloc.py: error: the child for K={size} failed:\n"
                         f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], metavar="K")
    p.add_argument("--num-latents", type=int, default=16, metavar="C")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tree-images", type=int, default=2000)
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_bench_args(p, argv, SECTION)
    if args.child is not None:
        args.size = args.child
        print(json.dumps(child(args)))
        return
    rows = ["| K | parameters | EM step, malloc as is (s) | EM step, kept (s) | speedup | "
            "page faults a step, as is | kept | peak memory, as is | kept | s/epoch, kept |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        plain, kept = run_child(argv, size, "0"), run_child(argv, size, "1")
        if plain["kept"] or not kept["kept"]:
            raise SystemExit("bench_malloc.py: error: keep_freed_memory did not act as asked "
                             "(not Linux with glibc?)")
        epoch = kept["seconds"] * TRAIN_IMAGES / args.batch_size
        rows.append(f"| {size} | {kept['params']:,} | {plain['seconds']:.3g} | "
                    f"{kept['seconds']:.3g} | {plain['seconds'] / kept['seconds']:.2f}x | "
                    f"{plain['faults']:,.0f} | {kept['faults']:,.0f} | "
                    f"{plain['peak_mib']:,.0f} MiB | {kept['peak_mib']:,.0f} MiB | "
                    f"{si(epoch)} |")
    report = "\n".join([
        provenance("Image-LVD EM step with and without keep_freed_memory "
                   "(`scripts/bench_malloc.py`)", args.device), "", *rows, "",
        f"Stage-(c) EM step (`PatchCircuit.em_step`) of a tied patch circuit, C = "
        f"{args.num_latents}, B = {args.batch_size}, {args.threads} thread(s); median of "
        f"{args.repeats} steps after {args.warmup} untimed, each in a fresh child process of "
        "the same code: *as is* with `HMMLVD_MALLOPT=0` (glibc's defaults), *kept* as the EM "
        "loop sets malloc. Page faults: minor faults during a timed step (median). Peak "
        "memory: the child's maximum resident set. s/epoch implied (step x 55,000 / B)."])
    print(report)
    if args.write is not None:
        write_section(args.write, SECTION, report)


if __name__ == "__main__":
    main()
