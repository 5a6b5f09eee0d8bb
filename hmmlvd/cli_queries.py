"""Command line of the HMM's exact queries: ``hmmlvd decode``, ``hmmlvd infill`` and the
constraint flags of ``hmmlvd sample`` (``--keywords``, ``--ordered``, ``--banned``).

    hmmlvd decode --model runs/h64 --text "the game was released in japan"
    hmmlvd infill --model runs/h64 --text "the ___ of the ___" --top 5 --num-samples 3
    hmmlvd sample --model runs/h64 --keywords "river,bank" --num-samples 3
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from hmmlvd.core.device import resolve_device
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.core.validate import check_count, check_seed
from hmmlvd.data.vocab import UNK
from hmmlvd.hmm.dfa import DFA, banned, keywords
from hmmlvd.hmm.model import HMM

#: A gap in ``--text``: a word of two or more underscores.
GAP = re.compile(r"_{2,}")


def add_query_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``decode`` and ``infill`` subcommands."""
    de = sub.add_parser("decode", help="most likely hidden-state path of a text (Viterbi) and "
                                       "each word's state posterior")
    de.add_argument("--model", type=Path, required=True, help="saved model folder")
    de.add_argument("--text", required=True, help="at most T words, space separated")
    de.add_argument("--device", default="auto")

    inf = sub.add_parser("infill", help="fill the gaps (___) of a text: the top words of each "
                                        "gap and joint samples of all gaps")
    inf.add_argument("--model", type=Path, required=True, help="saved model folder")
    inf.add_argument("--text", required=True,
                     help='at most T words with gaps written as ___, e.g. "the ___ of the ___"')
    inf.add_argument("--top", type=int, default=5, help="words listed per gap (default 5)")
    inf.add_argument("--num-samples", type=int, default=3,
                     help="joint samples of all gaps (default 3, at least 1)")
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--device", default="auto")


def add_constraint_args(p: argparse.ArgumentParser) -> None:
    """``hmmlvd sample``'s constraint flags."""
    p.add_argument("--keywords", default=None,
                   help='comma-separated words every sample must contain, e.g. "river,bank"')
    p.add_argument("--ordered", action="store_true",
                   help="with --keywords: the keywords must appear in the given order")
    p.add_argument("--banned", default=None,
                   help="comma-separated words no sample may contain")


def load_model(args: argparse.Namespace) -> HMM:
    hmm = HMM.from_pretrained(args.model, device=resolve_device(args.device))
    if hmm.vocab is None:
        raise CheckpointError(f"{args.model} has no vocab.txt: cannot read or print words")
    return hmm


def word_ids(hmm: HMM, words: list[str], flag: str) -> list[int]:
    """Ids of ``words`` in the model's vocabulary; :class:`DataError` naming every unknown one
    (``<unk>`` only when written out)."""
    unknown = [w for w in words if w not in hmm.vocab.index]
    if unknown:
        hint = f"; write {UNK} to ask for the unknown-word token" if UNK in hmm.vocab.index \
            else ""
        names = ", ".join(repr(w) for w in dict.fromkeys(unknown))
        raise DataError(f"{flag}: {'words' if len(unknown) > 1 else 'word'} {names} "
                        f"{'are' if len(unknown) > 1 else 'is'} not in the model's "
                        f"vocabulary{hint}")
    return [hmm.vocab.index[w] for w in words]


def text_words(hmm: HMM, text: str, flag: str = "--text") -> list[str]:
    words = text.split()
    if not words:
        raise DataError(f"{flag} is empty: give at least one word")
    if len(words) > hmm.length:
        raise DataError(f"{flag} has {len(words)} words but the model's windows have "
                        f"T={hmm.length}: give at most {hmm.length}")
    return words


def constraint_from(hmm: HMM, args: argparse.Namespace) -> DFA | None:
    """The DFA named by ``--keywords`` / ``--ordered`` / ``--banned`` (None without them)."""
    if args.ordered and not args.keywords:
        raise DataError("--ordered needs --keywords")
    parts = []
    for flag, value in (("--keywords", args.keywords), ("--banned", args.banned)):
        if value is None:
            parts.append(None)
            continue
        words = [w.strip() for w in value.split(",") if w.strip()]
        if not words:
            raise DataError(f"{flag} names no word")
        spaced = next((w for w in words if len(w.split()) > 1), None)
        if spaced is not None:
            raise DataError(f"{flag}: {spaced!r} is several words; give one word per keyword")
        parts.append(word_ids(hmm, words, flag))
    kw, ban = parts
    dfa = None
    if kw is not None:
        dfa = keywords(kw, ordered=args.ordered)
    if ban is not None:
        dfa = banned(ban) if dfa is None else dfa.intersect(banned(ban))
    return dfa


def cmd_decode(args: argparse.Namespace) -> None:
    hmm = load_model(args)
    words = text_words(hmm, args.text)
    x = torch.tensor([word_ids(hmm, words, "--text")])
    path, score = hmm.decode(x)
    post = hmm.predict_proba(x)[0]  # [L, H]
    print(f"{'position':>8}  {'word':<16} {'Viterbi state':>13} {'p(state | text)':>16}")
    for t, word in enumerate(words):
        state = int(path[0, t])
        print(f"{t + 1:>8}  {word:<16} {state:>13} {post[t, state].item():>16.3f}")
    log_p = hmm.log_likelihood(x)[0].item()
    print(f"log p(text, path) = {score[0].item():.3f}; log p(text) = {log_p:.3f}; the path "
          f"carries {math.exp(score[0].item() - log_p):.2%} of the text's probability")


def check_sampling(num_samples: int, seed: int) -> None:
    """DataError naming ``--num-samples`` below 1 or a ``--seed`` outside [0, 2**63)."""
    check_count(num_samples, "--num-samples", "num_samples")
    check_seed(seed, "--seed")


def cmd_infill(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise DataError(f"--top must be >= 1, got {args.top}")
    check_sampling(args.num_samples, args.seed)
    hmm = load_model(args)
    words = text_words(hmm, args.text)
    gaps = [bool(GAP.fullmatch(w)) for w in words]
    if not any(gaps):
        raise DataError('--text has no gap: write each missing word as ___ (e.g. "the ___ '
                        'of")')
    known = [w for w, g in zip(words, gaps, strict=True) if not g]
    ids = iter(word_ids(hmm, known, "--text"))
    x = torch.tensor([[0 if g else next(ids) for g in gaps]])
    mask = ~torch.tensor([gaps])
    if hmm.log_likelihood(x, mask)[0].item() == -math.inf:
        raise DataError("the words of --text have probability 0 under the model: there is "
                        "nothing to fill in")
    values, top = hmm.infill_distribution(x, mask, top_k=args.top)
    for t, gap in enumerate(gaps):
        if gap:
            listed = ", ".join(f"{hmm.vocab.decode([int(w)])[0]} {p:.3f}"
                               for p, w in zip(values[0, t].tolist(), top[0, t].tolist(),
                                               strict=True))
            print(f"gap at word {t + 1}: {listed}")
    samples = hmm.infill(x, mask, args.num_samples, seed=args.seed)[0]
    print(f"{args.num_samples} joint samples of all gaps:")
    for row in samples.tolist():
        print("  " + " ".join(w if not g else f"[{s}]" for w, g, s in
                              zip(words, gaps, hmm.vocab.decode(row), strict=True)))


def sample_constrained(hmm: HMM, dfa: DFA, args: argparse.Namespace,
                       prefix: torch.Tensor | None) -> torch.Tensor:
    """``hmmlvd sample`` with a constraint: its probability first, then exact samples."""
    prob = hmm.constraint_probability(dfa, prefix).item()
    if prob == 0.0:
        raise DataError("the constraint has probability 0 under the model"
                        f"{' given --prefix' if prefix is not None else ''}: no window "
                        "satisfies it, so there is nothing to sample")
    given = " given the prefix" if prefix is not None else ""
    print(f"p(constraint{given}) = {prob:.4g}")
    gen = torch.Generator(device=hmm.device).manual_seed(args.seed)
    return hmm.sample(args.num_samples, prefix=prefix, generator=gen, constraint=dfa)
