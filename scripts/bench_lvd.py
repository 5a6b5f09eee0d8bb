"""Suffix-embedding throughput of the LVD encoder, in suffix embeddings per second on real
WikiText-2 windows: the earlier masked pipeline (``legacy``, float32) beside the current
one in each encoder dtype, and exact mode (one pass per suffix) for each. The ratio masked /
exact is what makes full-size LVD practical.

    python scripts/bench_lvd.py --data-dir ../shared/data/wikitext-2 --device cpu \\
        --write docs/results.md

``legacy`` (:func:`legacy_piece_table`) is kept here only for this comparison: its piece table
came from the tokenizer's Rust backend as configured, and the packaged MiniLM's
``tokenizer.json`` pads every encoding to 128 tokens, so each word kept [PAD] pieces up to the
cap of 4: every window of T=32 words was 130 tokens instead of 36 on average. The encoder pass
is the same in every row.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hmmlvd.core.device import resolve_device
from hmmlvd.core.report import provenance, write_section
from hmmlvd.data import TokenWindows, Vocabulary, load_wikitext
from hmmlvd.lvd.text.encoder import (
    ENCODER_DTYPE_NAMES,
    Encoder,
    load_encoder,
    resolve_encoder_dtype,
    word_to_text,
)
from hmmlvd.lvd.text.suffix import (
    DEFAULT_MAX_PIECES,
    PieceTable,
    build_piece_table,
    exact_suffix_embeddings,
    layout_windows,
    length_sorted_batches,
    masked_suffix_embeddings,
    piece_table_from_encodings,
)

SECTION = "bench_lvd"
Embedder = Callable[[Encoder, torch.Tensor, PieceTable], torch.Tensor]


# ----- the earlier pipeline, kept only for this benchmark ----------------------------
def legacy_piece_table(vocab: Vocabulary, tokenizer,
                       max_pieces_per_word: int = DEFAULT_MAX_PIECES) -> PieceTable:
    """The piece table as the earlier pipeline built it: the backend tokenizer with its own padding
    and truncation settings (pieces [V, P] may hold [PAD] pieces counted in ``lengths`` [V])."""
    texts = [[word_to_text(w, tokenizer)] for w in vocab.tokens]
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, is_pretokenized=True,
                                                       add_special_tokens=False)
    return piece_table_from_encodings(encoded, tokenizer, max_pieces_per_word)


# ----- timing --------------------------------------------------------------------------------
@dataclass
class Pipeline:
    """One row of the table: a label, the encoder dtype's name and how its piece table is
    built (the masked pass itself is the same for all)."""

    label: str
    dtype: str
    table: Callable[[Vocabulary, object], PieceTable]


def _sync(encoder: Encoder) -> None:
    """Wait for queued GPU work, so that timings cover it."""
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def suffixes_per_second(encoder: Encoder, windows: torch.Tensor, table: PieceTable,
                        embed: Embedder, batch_size: int, repeats: int = 1) -> float:
    """Suffix embeddings per second of ``embed`` over ``windows`` [N, T], in batches of windows
    of similar token counts (as :func:`hmmlvd.lvd.text.suffix.embed_windows` runs them); the best
    of ``repeats`` timed passes after a warm-up (the CPU may be shared)."""
    batches = length_sorted_batches(windows, table, batch_size)
    embed(encoder, windows[batches[0][:2]], table)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for rows in batches:
            embed(encoder, windows[rows], table)
        _sync(encoder)
        best = min(best, time.perf_counter() - started)
    return windows.numel() / best


def pipelines(dtypes: Sequence[str]) -> list[Pipeline]:
    """The legacy float32 row, then the current pipeline in each of ``dtypes``."""
    rows = [Pipeline("legacy (before #16)", "float32", legacy_piece_table)]
    return rows + [Pipeline("current", d, build_piece_table) for d in dtypes]


def bench_row(pipe: Pipeline, encoder: Encoder, vocab: Vocabulary, windows: torch.Tensor,
              args: argparse.Namespace) -> dict[str, float]:
    """Masked and exact suffixes/s of one pipeline, and its mean tokens per window."""
    table = pipe.table(vocab, encoder.tokenizer)
    masked = suffixes_per_second(encoder, windows, table, masked_suffix_embeddings,
                                 args.batch_size, args.repeats)
    exact = suffixes_per_second(encoder, windows[:args.exact_windows], table,
                                exact_suffix_embeddings, args.batch_size)
    tokens = float(layout_windows(windows, table).length.float().mean())
    return {"masked": masked, "exact": exact, "tokens": tokens}


def format_row(pipe: Pipeline, resolved: torch.dtype, result: dict[str, float],
               legacy: float) -> str:
    """One markdown row: pipeline, dtype, tokens, masked and exact rates, their ratios."""
    dtype = pipe.dtype if pipe.dtype != "auto" else f"auto ({str(resolved)[6:]})"
    return (f"| {pipe.label} | {dtype} | {result['tokens']:.1f} | {result['masked']:,.0f} | "
            f"{result['masked'] / legacy:.1f}x | {result['exact']:,.0f} | "
            f"{result['masked'] / result['exact']:.1f}x |")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--encoder", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--windows", type=int, default=128, help="windows timed in masked mode")
    p.add_argument("--exact-windows", type=int, default=16, help="windows timed in exact mode")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed masked passes per row; the best counts")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=ENCODER_DTYPE_NAMES, help="encoder dtypes of the current pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--write", type=Path, default=None)
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_wikitext(args.data_dir)
    windows = TokenWindows(data.train, args.length, max_windows=args.windows, seed=0)[:]
    lines = ["| pipeline | encoder dtype | tokens / window | masked suffixes/s | "
             "vs legacy float32 | exact suffixes/s | masked / exact |",
             "|---|---|---:|---:|---:|---:|---:|"]
    encoders: dict[torch.dtype, Encoder] = {}
    legacy = None
    for pipe in pipelines(args.dtypes):
        dtype = resolve_encoder_dtype(pipe.dtype, args.device)
        if dtype not in encoders:
            encoders[dtype] = load_encoder(args.encoder, device=args.device, dtype=dtype)
        result = bench_row(pipe, encoders[dtype], data.vocab, windows, args)
        legacy = legacy or result["masked"]
        lines.append(format_row(pipe, dtype, result, legacy))
        print(lines[-1], flush=True)
    report = "\n".join([f"Encoder: {args.encoder or 'packaged all-MiniLM-L6-v2'}; "
                        f"{args.windows} random train windows of T={args.length} "
                        f"({args.exact_windows} in exact mode), batches of {args.batch_size} "
                        f"sorted by token count, best of {args.repeats}; threads "
                        f"{torch.get_num_threads()}. `legacy`: the earlier pipeline "
                        "(every word padded with [PAD] pieces up to the cap of 4 by the "
                        "packaged tokenizer.json); `current` gives other numbers on the packaged "
                        "MiniLM for that reason only (the same on a tokenizer without padding).",
                        "", *lines])
    print("\n" + report)
    if args.write:
        title = "LVD suffix-embedding throughput (`scripts/bench_lvd.py`)"
        write_section(args.write, SECTION, provenance(title, args.device) + "\n\n" + report)


if __name__ == "__main__":
    main()
