"""What a trained HMM's exact queries give on real text (WikiText-2 test windows):

(a) **masked-word prediction**: in each of ``--windows`` seeded test windows one word at a
    seeded random position is hidden; it is predicted by the HMM's infill distribution (both
    sides: p(x_t | every other word of the window)), by the HMM's next-token distribution (left
    side only: p(x_t | x_1..x_{t-1})) and by the Kneser–Ney trigram fitted on train (left side
    only, the same words before it). Reported: perplexity of the hidden word, top-1 and top-10
    accuracy.
(b) **keyword-constrained samples**: for ``--pairs`` seeded test windows, two distinct words of
    it that are neither ``<unk>`` nor among the 100 most frequent train words are the keywords
    (any order); the constraint's prior probability under the model and ``--samples`` exact
    samples from p(x | both keywords occur), each checked to contain them.
(c) **decode**: the Viterbi state path of one test window, with each word's state posterior.

    python scripts/hmm_queries.py --model runs/h128-main --data-dir ../shared/data/wikitext-2 \\
        --write docs/results.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hmmlvd.core.device import resolve_device
from hmmlvd.core.errors import HMMLVDError
from hmmlvd.core.report import clone_relative, provenance, write_section
from hmmlvd.data import TokenWindows, load_wikitext
from hmmlvd.data.vocab import UNK
from hmmlvd.hmm import HMM
from hmmlvd.hmm.dfa import keywords
from hmmlvd.ngram import KneserNey

SECTION = "hmm_queries"
FREQUENT = 100  # the most frequent train words, never keywords


# ----- (a) masked-word prediction ---------------------------------------------------------------
def hidden_words(windows: TokenWindows, count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` seeded windows [N, T] and the position hidden in each [N]."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(windows), size=min(count, len(windows)), replace=False)
    x = windows[np.sort(rows)]
    return x, rng.integers(0, x.shape[1], size=len(x))


def scores_of(probs: np.ndarray, truth: int) -> tuple[float, bool, bool]:
    """(log p(truth), truth is the top word, truth is in the top 10) of a distribution [V]."""
    p = float(probs[truth])
    rank = int((probs > p).sum())
    return (math.log(p) if p > 0 else -math.inf), rank < 1, rank < 10


def masked_prediction(hmm: HMM, kn: KneserNey, x: torch.Tensor, hidden: np.ndarray,
                      batch: int) -> dict[str, list[tuple[float, bool, bool]]]:
    """Per window: the scores of the HMM infill, HMM next-token and Kneser–Ney predictions."""
    out: dict[str, list] = {"HMM infill (both sides)": [], "HMM next token (left side)": [],
                            "Kneser–Ney 3-gram (left side)": []}
    for start in tqdm(range(0, len(x), batch), desc="masked words", unit="batch"):
        part, where = x[start:start + batch], hidden[start:start + batch]
        mask = torch.ones_like(part, dtype=torch.bool)
        mask[torch.arange(len(part)), torch.as_tensor(where)] = False
        infill = hmm.infill_distribution(part, mask)  # [b, T, V]
        for i, t in enumerate(where.tolist()):
            truth = int(part[i, t])
            out["HMM infill (both sides)"].append(
                scores_of(infill[i, t].double().cpu().numpy(), truth))
            left = part[i:i + 1, :t]
            nxt = hmm.next_token_distribution(left)[0]
            out["HMM next token (left side)"].append(
                scores_of(nxt.double().cpu().numpy(), truth))
            out["Kneser–Ney 3-gram (left side)"].append(
                scores_of(kn.distribution(part[i, :t].numpy()), truth))
    return out


def masked_table(results: dict[str, list[tuple[float, bool, bool]]]) -> str:
    lines = ["| predictor | hidden-word perplexity | top-1 accuracy | top-10 accuracy |",
             "|---|---:|---:|---:|"]
    for name, rows in results.items():
        logs = np.array([r[0] for r in rows])
        ppl = math.exp(-logs.mean()) if np.isfinite(logs).all() else math.inf
        lines.append(f"| {name} | {ppl:.1f} | {np.mean([r[1] for r in rows]):.1%} | "
                     f"{np.mean([r[2] for r in rows]):.1%} |")
    return "\n".join(lines)


# ----- (b) keyword-constrained samples ---------------------------------------------------------
def keyword_pairs(hmm: HMM, x: torch.Tensor, train: np.ndarray, count: int,
                  seed: int) -> list[tuple[int, int]]:
    """``count`` seeded pairs of distinct words, each pair from one test window, neither
    ``<unk>`` nor among the :data:`FREQUENT` most frequent train words."""
    frequent = set(np.argsort(-np.bincount(train, minlength=hmm.vocab_size))[:FREQUENT].tolist())
    unk = hmm.vocab.index.get(UNK)
    rng = np.random.default_rng(seed)
    pairs = []
    for row in x[rng.permutation(len(x))].tolist():
        words = sorted({w for w in row if w not in frequent and w != unk})
        if len(words) >= 2:
            a, b = rng.choice(len(words), size=2, replace=False)
            pairs.append((words[a], words[b]))
        if len(pairs) == count:
            break
    return pairs


def constrained_samples(hmm: HMM, pairs: list[tuple[int, int]], samples: int, seed: int
                        ) -> tuple[str, list[str], float]:
    """The table of pairs (prior probability, samples satisfied), a few printed samples and
    the fraction of all samples that satisfy their constraint."""
    lines = ["| keywords | p(both occur) under the model | samples containing both |",
             "|---|---:|---:|"]
    shown, satisfied, total = [], 0, 0
    for i, (a, b) in enumerate(pairs):
        dfa = keywords([a, b])
        prior = hmm.constraint_probability(dfa).item()
        drawn = hmm.sample(samples, constraint=dfa, seed=seed + i)
        ok = sum(dfa.accepts(row) for row in drawn.tolist())
        satisfied, total = satisfied + ok, total + len(drawn)
        words = hmm.vocab.decode([a, b])
        lines.append(f"| {words[0]}, {words[1]} | {prior:.3g} | {ok}/{len(drawn)} |")
        if i < 3:
            for row in drawn[:2].tolist():
                text = " ".join(f"**{w}**" if w in words else w for w in hmm.vocab.decode(row))
                shown.append(f"- ({words[0]}, {words[1]}): {text}")
    return "\n".join(lines), shown, satisfied / max(total, 1)


# ----- (c) decode --------------------------------------------------------------------------------
def decode_example(hmm: HMM, window: torch.Tensor) -> str:
    x = window.unsqueeze(0)
    path, score = hmm.decode(x)
    post = hmm.predict_proba(x)[0]
    words = hmm.vocab.decode(window.tolist())
    cells = [f"{w}/{int(s)} ({post[t, int(s)].item():.2f})"
             for t, (w, s) in enumerate(zip(words, path[0].tolist(), strict=True))]
    log_p = hmm.log_likelihood(x)[0].item()
    return (" ".join(cells) + f"\n\n(word/state (posterior of that state); log p(window, path) "
            f"= {score[0].item():.2f}, log p(window) = {log_p:.2f}: the best path carries "
            f"{math.exp(score[0].item() - log_p):.2%} of the window's probability)")


# ----- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--windows", type=int, default=1000, help="test windows for (a)")
    p.add_argument("--pairs", type=int, default=20, help="keyword pairs for (b)")
    p.add_argument("--samples", type=int, default=5, help="samples per keyword pair")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--write", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        hmm = HMM.from_pretrained(args.model, device=device)
        if hmm.vocab is None:
            raise HMMLVDError(f"{args.model} has no vocab.txt")
        data = load_wikitext(args.data_dir, vocab=hmm.vocab)
        kn = KneserNey(len(data.vocab), 3).fit(data.train)
        windows = TokenWindows(data.test, hmm.length)
        x, hidden = hidden_words(windows, args.windows, args.seed)
        masked = masked_table(masked_prediction(hmm, kn, x, hidden, args.batch_size))
        pairs = keyword_pairs(hmm, x, data.train, args.pairs, args.seed)
        pair_table, shown, fraction = constrained_samples(hmm, pairs, args.samples, args.seed)
        decoded = decode_example(hmm, x[0])
    except HMMLVDError as exc:
        print(f"hmm_queries: error: {exc}", file=sys.stderr)
        return 2
    body = "\n".join([
        f"Model: `{clone_relative(str(args.model))}` ({hmm.num_states} states, T = "
        f"{hmm.length}); test split.", "",
        f"(a) Masked-word prediction: {len(x):,} seeded test windows, one word hidden at a "
        "seeded random position in each.", "", masked, "",
        f"(b) Keyword-constrained sampling: {len(pairs)} pairs of words from seeded test "
        f"windows (neither <unk> nor among the {FREQUENT} most frequent train words), "
        f"{args.samples} exact samples each; {fraction:.0%} of all samples contain both "
        "keywords.", "", pair_table, "", "A few samples (keywords in bold):", "", *shown, "",
        "(c) Viterbi decoding of the first of those test windows:", "", decoded])
    print(body)
    if args.write:
        write_section(args.write, SECTION, provenance(
            "Exact HMM queries on WikiText-2 test (`scripts/hmm_queries.py`)", device) + "\n\n"
            + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
