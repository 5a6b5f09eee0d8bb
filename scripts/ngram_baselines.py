"""Unigram and interpolated Kneser–Ney n-gram perplexities on WikiText-2: the baselines every
HMM perplexity in this project is read against (same token streams: every line followed by
``<eos>``, n-grams fitted on train and scored on every token of valid and test).

    python scripts/ngram_baselines.py --data-dir ../shared/data/wikitext-2 --write docs/results.md
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from hmmlvd.core.report import provenance, write_section
from hmmlvd.data import load_wikitext
from hmmlvd.ngram import baseline_perplexities, baselines_markdown

SECTION = "ngram_baselines"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--discount", type=float, default=0.75)
    p.add_argument("--write", type=Path, default=None, help="markdown file to record the table")
    args = p.parse_args(argv)
    data = load_wikitext(args.data_dir)
    rows = baseline_perplexities(data, args.orders, discount=args.discount)
    table = baselines_markdown(rows)
    described = (f"Fitted on the {len(data.train):,} train tokens (V = {len(data.vocab):,}), "
                 f"scored on all {len(data.valid):,} valid and {len(data.test):,} test tokens; "
                 f"one absolute discount {args.discount} for every order; the first tokens of "
                 "a split use the shorter context they have. Seconds (fit + score): " +
                 ", ".join(f"{r.name} {r.seconds:.1f}" for r in rows) + ".")
    print(table + "\n\n" + described)
    if args.write:
        write_section(args.write, SECTION, "\n".join([
            provenance("n-gram baselines (`scripts/ngram_baselines.py`)", torch.device("cpu")),
            "", described, "", table]))


if __name__ == "__main__":
    main()
