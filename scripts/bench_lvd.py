"""Suffix-embedding throughput of the LVD encoder: masked mode (one pass per window) against
exact mode (one pass per suffix), in suffix embeddings per second, on real WikiText-2 windows,
for each encoder dtype. The ratio masked / exact is what makes full-size LVD practical.

    python scripts/bench_lvd.py --data-dir ../shared/data/wikitext-2 --write docs/results.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hmmlvd.cli import resolve_device
from hmmlvd.data import TokenWindows, load_wikitext
from hmmlvd.lvd.distill import ENCODER_DTYPES
from hmmlvd.lvd.encoder import load_encoder
from hmmlvd.lvd.suffix import build_piece_table, suffix_embeddings
from hmmlvd.report import provenance, write_section

SECTION = "bench_lvd"


def suffixes_per_second(encoder, windows: torch.Tensor, table, mode: str,
                        batch_size: int) -> float:
    """Suffix embeddings per second of ``suffix_embeddings`` over ``windows`` [N, T]."""
    suffix_embeddings(encoder, windows[:2], table, mode=mode)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(windows), batch_size):
        suffix_embeddings(encoder, windows[start:start + batch_size], table, mode=mode)
    return windows.numel() / (time.perf_counter() - started)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--encoder", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--windows", type=int, default=128, help="windows timed in masked mode")
    p.add_argument("--exact-windows", type=int, default=16, help="windows timed in exact mode")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=sorted(ENCODER_DTYPES))
    p.add_argument("--device", default="auto")
    p.add_argument("--write", type=Path, default=None)
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_wikitext(args.data_dir)
    windows = TokenWindows(data.train, args.length, max_windows=args.windows, seed=0)[:]
    lines = ["| encoder dtype | masked suffixes/s | exact suffixes/s | masked / exact |",
             "|---|---:|---:|---:|"]
    for dtype in args.dtypes:
        encoder = load_encoder(args.encoder, device=args.device, dtype=ENCODER_DTYPES[dtype])
        table = build_piece_table(data.vocab, encoder.tokenizer)
        masked = suffixes_per_second(encoder, windows, table, "masked", args.batch_size)
        exact = suffixes_per_second(encoder, windows[:args.exact_windows], table, "exact",
                                    args.batch_size)
        lines.append(f"| {dtype} | {masked:,.0f} | {exact:,.0f} | {masked / exact:.1f}x |")
        print(lines[-1], flush=True)
    report = "\n".join([f"Encoder: {args.encoder or 'packaged all-MiniLM-L6-v2'}; "
                        f"{args.windows} random train windows of T={args.length} "
                        f"({args.exact_windows} in exact mode); threads "
                        f"{torch.get_num_threads()}.", "", *lines])
    print("\n" + report)
    if args.write:
        title = "LVD suffix-embedding throughput (`scripts/bench_lvd.py`)"
        write_section(args.write, SECTION, provenance(title, args.device) + "\n\n" + report)


if __name__ == "__main__":
    main()
