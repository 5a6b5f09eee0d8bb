"""LVD vs random initialisation of HMMs on WikiText-2, under the same EM budget.

For each number of hidden states H: an HMM from seeded random parameters and one initialised
by latent variable distillation (suffix embeddings -> k-means per position -> closed-form MLE)
are both finetuned with the same mini-batch EM schedule on the same training windows, then
evaluated by sliding perplexity (each token predicted from the 31 tokens before it) on valid
and test. The suffix embeddings are computed once (and cached on disk) and shared by every H.

Writes a markdown table and a PNG plot (test perplexity vs H, one curve per initialisation):

    python scripts/lvd_vs_random.py --data-dir ../shared/data/wikitext-2 \\
        --hidden-states 64 128 256 --max-windows 20000 --write docs/results.md

The paper's sizes on a GPU (full train set, 20 + 5 epochs):

    python scripts/lvd_vs_random.py --data-dir ../shared/data/wikitext-2 --device cuda \\
        --hidden-states 128 256 512 750 1024 1250 --max-windows 0 --epochs 20 \\
        --phase2-epochs 5 --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.figure import Figure

from hmmlvd.cli import resolve_device
from hmmlvd.data import TokenWindows, WikiText, load_wikitext
from hmmlvd.hmm import HMM, TrainConfig, sliding_perplexity, train
from hmmlvd.hmm.train import two_phase_schedule
from hmmlvd.lvd.distill import DEFAULT_CACHE, LVDSettings, embed, run_lvd
from hmmlvd.report import provenance, write_section

SECTION = "lvd_vs_random"


@dataclass
class Row:
    """One trained model: its initialisation, size, perplexities and stage seconds."""

    init: str
    num_states: int
    valid_ppl: float
    test_ppl: float
    seconds: dict[str, float]


def evaluate(hmm: HMM, data: WikiText, max_tokens: int | None) -> tuple[float, float]:
    """Sliding perplexity on valid and test (the first ``max_tokens`` tokens of each)."""
    return tuple(sliding_perplexity(hmm, data.split(s)[:max_tokens], 2048).perplexity
                 for s in ("valid", "test"))


def run_random(h: int, data: WikiText, windows: TokenWindows, config: TrainConfig,
               args: argparse.Namespace) -> Row:
    hmm = HMM(h, len(data.vocab), windows.length, seed=args.seed, device=args.device)
    started = time.perf_counter()
    train(hmm, windows, config)
    seconds = {"em": time.perf_counter() - started}
    return Row("random", h, *evaluate(hmm, data, args.max_eval_tokens), seconds)


def run_distilled(h: int, data: WikiText, windows: TokenWindows, config: TrainConfig,
                  settings: LVDSettings, embeddings, args: argparse.Namespace) -> Row:
    result = run_lvd(windows, h, data.vocab, settings, train_config=config,
                     device=args.device, embeddings=embeddings)
    return Row("LVD", h, *evaluate(result.hmm, data, args.max_eval_tokens), result.seconds)


def table(rows: Sequence[Row], embed_seconds: float) -> str:
    """Markdown: one line per H with both initialisations side by side."""
    lines = ["| H | random valid | random test | LVD valid | LVD test | random EM s | "
             "LVD cluster s | LVD MLE s | LVD EM s |", "|---:" * 9 + "|"]
    by_h: dict[int, dict[str, Row]] = {}
    for r in rows:
        by_h.setdefault(r.num_states, {})[r.init] = r
    for h, pair in sorted(by_h.items()):
        rnd, lvd = pair["random"], pair["LVD"]
        lines.append(f"| {h} | {rnd.valid_ppl:.1f} | {rnd.test_ppl:.1f} | {lvd.valid_ppl:.1f} | "
                     f"**{lvd.test_ppl:.1f}** | {rnd.seconds['em']:.0f} | "
                     f"{lvd.seconds['cluster']:.0f} | {lvd.seconds['mle']:.1f} | "
                     f"{lvd.seconds['em']:.0f} |")
    lines.append("")
    lines.append(f"Suffix embeddings (shared by every H): {embed_seconds:.0f} s "
                 "(0 when read from the cache).")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Test perplexity vs H, one curve per initialisation."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for init, marker in (("random", "o"), ("LVD", "s")):
        points = sorted((r.num_states, r.test_ppl) for r in rows if r.init == init)
        ax.plot(*zip(*points, strict=True), marker=marker, label=f"{init} init")
    ax.set_xscale("log", base=2)
    sizes = sorted({r.num_states for r in rows})
    ax.set_xticks(sizes, [str(h) for h in sizes])
    ax.minorticks_off()
    ax.set_xlabel("hidden states H")
    ax.set_ylabel("test perplexity (sliding, 31-token context)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def settings_line(args: argparse.Namespace, subset: str, config: TrainConfig) -> str:
    """One sentence with every setting a reader needs to rerun the comparison."""
    kmeans = f" on {args.kmeans_sample:,} windows" if args.kmeans_sample else ""
    tokens = f", first {args.max_eval_tokens:,} tokens" if args.max_eval_tokens else ""
    return (f"Settings: {subset}; EM {json.dumps([asdict(p) for p in config.phases])}, batch "
            f"{config.batch_size}, pseudocount {config.pseudocount}; encoder "
            f"{args.encoder or 'packaged all-MiniLM-L6-v2'} ({args.encoder_dtype}, "
            f"{args.embedding_mode} suffix "
            f"embeddings); k-means {args.kmeans_iters} iterations{kmeans}. Perplexity: sliding, "
            f"31-token context{tokens}.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--hidden-states", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--max-windows", type=int, default=20000,
                   help="seeded random subset of train windows (0: all)")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--phase2-epochs", type=int, default=1)
    p.add_argument("--phase2-step-size", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--pseudocount", type=float, default=1e-3)
    p.add_argument("--encoder", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--encoder-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--embedding-mode", choices=["masked", "exact"], default="masked")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--kmeans-sample", type=int, default=None)
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--max-eval-tokens", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG path (default: lvd_vs_random.png beside --write, else in runs/)")
    p.add_argument("--write", type=Path, default=None,
                   help="also record the table in this markdown file (e.g. docs/results.md)")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.plot is None:
        args.plot = (args.write.parent if args.write else Path("runs")) / "lvd_vs_random.png"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_wikitext(args.data_dir)
    windows = TokenWindows(data.train, args.length, max_windows=args.max_windows or None,
                           seed=args.seed)
    config = TrainConfig(phases=two_phase_schedule(args.epochs, args.step_size,
                                                   args.phase2_epochs, args.phase2_step_size),
                         batch_size=args.batch_size, pseudocount=args.pseudocount,
                         seed=args.seed)
    settings = LVDSettings(encoder=args.encoder, encoder_dtype=args.encoder_dtype,
                           mode=args.embedding_mode,
                           cache_dir=args.cache_dir, kmeans_sample=args.kmeans_sample,
                           kmeans_iters=args.kmeans_iters, pseudocount=args.pseudocount,
                           seed=args.seed)
    subset = (f"a seeded random subset of {len(windows):,} of the {len(windows.view):,} train "
              "windows" if len(windows) < len(windows.view) else f"all {len(windows):,} "
              "train windows")
    print(f"LVD vs random init on {subset}; H = {args.hidden_states}")
    started = time.perf_counter()
    embeddings = embed(windows, data.vocab, settings, args.device)
    embed_seconds = time.perf_counter() - started
    rows = []
    for h in args.hidden_states:
        rows.append(run_random(h, data, windows, config, args))
        rows.append(run_distilled(h, data, windows, config, settings, embeddings, args))
        print(f"H={h}: test ppl random {rows[-2].test_ppl:.1f}, LVD {rows[-1].test_ppl:.1f}")
    report = table(rows, embed_seconds)
    described = settings_line(args, subset, config)
    print("\n" + report + "\n\n" + described)
    plot(rows, args.plot, f"WikiText-2, {len(windows):,} train windows")
    print(f"plot: {args.plot}")
    if args.write:
        body = "\n".join([provenance("LVD vs random init (`scripts/lvd_vs_random.py`)",
                                     args.device), "", described, "", report, "",
                          f"![test perplexity vs H]({args.plot.name})"])
        write_section(args.write, SECTION, body)


if __name__ == "__main__":
    main()
