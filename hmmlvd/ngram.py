"""n-gram baselines on a token stream: unigram MLE and interpolated Kneser–Ney.

Perplexities are on the same footing as the HMM's **sliding** perplexity
(:mod:`hmmlvd.hmm.eval`): the split is one stream s_1..s_N and every token is predicted,
p(s_k | s_{k-n+1}..s_{k-1}); the first n-1 tokens use the shorter context they have. The stream
start is an *unknown* history (no BOS padding): a missing context word counts as an unseen
context, so the model backs off wholly to the order that the available context supports.

Order 1 is the unigram maximum-likelihood estimate p(w) = c(w) / N (a word never seen in
train gets 0, so a stream with one has perplexity inf).

Order n >= 2 is interpolated Kneser–Ney (Chen & Goodman 1998) with one absolute discount
D in (0, 1) for all orders. With h a context of k-1 words and h' = h without its first word:

- counts: the highest order uses raw counts a(hw) = c(hw); an order k < n uses continuation
  counts a(hw) = N1+(•hw) = |{v : c(vhw) > 0}| (distinct left extensions in train);
- S(h) = sum_w a(hw) and T(h) = |{w : a(hw) > 0}|;
- if S(h) > 0:  p_k(w|h) = max(a(hw) - D, 0) / S(h) + D T(h) / S(h) * p_{k-1}(w|h');
  if S(h) = 0 (h unseen as a context, or not available at the stream start):
  p_k(w|h) = p_{k-1}(w|h');
- the lowest order interpolates with the uniform p_0(w) = 1/V:
  p_1(w) = max(N1+(•w) - D, 0) / N1+(••) + D |{w : N1+(•w) > 0}| / N1+(••) * 1/V,
  so every probability is positive.

Each p_k(.|h) sums to 1 over the vocabulary because every nonzero a(hw) >= 1 > D.

The implementation is vectorised: a k-gram is the int64 key ``id(prefix (k-1)-gram) * V + w``
(ids index the sorted unique keys of each order, so keys stay below N * V for any order), and
counts are read with ``np.unique``, ``np.bincount`` and ``np.searchsorted``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int, check_integer_dtype
from hmmlvd.hmm.eval import Perplexity


@dataclass(frozen=True)
class NGramConfig:
    """Order n >= 1 (1 = unigram MLE) and the Kneser–Ney discount D in (0, 1) (unused by
    order 1)."""

    order: int = 3
    discount: float = 0.75

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", check_int(self.order, "n-gram order", 1))
        d = self.discount
        if isinstance(d, bool) or not isinstance(d, int | float | np.number):
            raise DataError(f"Kneser–Ney discount must be a number in (0, 1), got {d!r}")
        if not (math.isfinite(d) and 0 < d < 1):
            raise DataError(f"Kneser–Ney discount must lie strictly between 0 and 1, got {d}")
        object.__setattr__(self, "discount", float(d))


def _as_stream(x: object, vocab_size: int, what: str, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a 1-D int64 array of ids in [0, vocab_size), or a DataError."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a 1-D array of integer token ids ({exc})") from exc
    if arr.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of token ids, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.int64)
        raise DataError(f"{what} is empty: it must hold at least one token id")
    check_integer_dtype(arr, what)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(f"{what} has token id {bad} outside [0, {vocab_size}) "
                        f"(vocab_size={vocab_size})")
    return arr.astype(np.int64, copy=False)


def _lookup(keys: np.ndarray, query: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Index of each ``query`` in the sorted ``keys``, -1 where absent or not ``valid``."""
    if len(keys) == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(valid & (keys[idx] == query), idx, -1)


@dataclass
class _Level:
    """Tables of order k: sorted k-gram keys, their counts a(g) (raw or continuation), and
    S(h), T(h) indexed by the id of the (k-1)-gram context h."""

    keys: np.ndarray
    counts: np.ndarray
    context_total: np.ndarray
    context_types: np.ndarray


class KneserNey:
    """Unigram MLE (order 1) or interpolated Kneser–Ney (order >= 2) over ids in
    [0, vocab_size); see the module docstring for the formulas."""

    def __init__(self, vocab_size: int, order: int = 3, discount: float = 0.75) -> None:
        self.vocab_size = check_int(vocab_size, "vocab_size", 1)
        self.config = NGramConfig(order, discount)
        self._levels: list[_Level] = []

    @property
    def order(self) -> int:
        return self.config.order

    @property
    def discount(self) -> float:
        return self.config.discount

    def __repr__(self) -> str:
        return (f"KneserNey(vocab_size={self.vocab_size}, order={self.order}, "
                f"discount={self.discount}, fitted={self.fitted})")

    @classmethod
    def from_config(cls, vocab_size: int, config: NGramConfig) -> KneserNey:
        """A model with ``config``'s order and discount."""
        return cls(vocab_size, config.order, config.discount)

    @property
    def fitted(self) -> bool:
        return bool(self._levels)

    # ----- fitting -------------------------------------------------------------------------
    def fit(self, stream: object) -> KneserNey:
        """Count the n-grams of the 1-D id stream (every window of 1..n consecutive tokens)."""
        s = _as_stream(stream, self.vocab_size, "training stream")
        n, V = self.order, self.vocab_size
        if len(s) > np.iinfo(np.int64).max // V:  # pragma: no cover - keys are id * V + w
            raise DataError(f"training stream of {len(s)} tokens is too long for int64 keys")
        keys: list[np.ndarray] = []
        raw: list[np.ndarray] = []
        grams: list[np.ndarray] = []  # id of the k-gram ending at each position (-1: none)
        prev = np.zeros(len(s), dtype=np.int64)  # id of the (k-1)-gram ending at i-1; 0 = empty
        for _ in range(n):
            ok = prev >= 0
            uniq, inverse = np.unique(prev[ok] * V + s[ok], return_inverse=True)
            gram = np.full(len(s), -1, dtype=np.int64)
            gram[ok] = inverse.reshape(-1)
            keys.append(uniq)
            raw.append(np.bincount(inverse.reshape(-1), minlength=len(uniq)))
            grams.append(gram)
            prev = np.concatenate([[-1], gram[:-1]])
        levels = []
        for k in range(1, n + 1):
            if n == 1 or k == n:
                counts = raw[k - 1]
            else:  # continuation count of a k-gram: distinct (k+1)-grams with it as suffix
                longer, shorter = grams[k], grams[k - 1]
                at = longer >= 0
                suffix = np.zeros(len(keys[k]), dtype=np.int64)
                suffix[longer[at]] = shorter[at]
                counts = np.bincount(suffix, minlength=len(keys[k - 1]))
            n_contexts = len(keys[k - 2]) if k >= 2 else 1
            context = keys[k - 1] // V
            total = np.bincount(context, weights=counts, minlength=n_contexts)
            types = np.bincount(context, weights=counts > 0, minlength=n_contexts)
            levels.append(_Level(keys[k - 1], counts.astype(np.float64), total, types))
        self._levels = levels
        return self

    # ----- probabilities -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self._levels:
            raise DataError("this n-gram model is not fitted yet: call fit(train_stream) first")

    def _probs(self, contexts: list[np.ndarray], w: np.ndarray) -> np.ndarray:
        """p(w | context) where ``contexts[k-1]`` is the id of the order-k context (the k-1
        words before w) in the (k-1)-gram table, -1 when unseen or unavailable (arrays
        broadcast against ``w``)."""
        V, D = self.vocab_size, self.discount
        if self.order == 1:
            level = self._levels[0]
            found = _lookup(level.keys, w, np.ones(w.shape, dtype=bool))
            counts = np.where(found >= 0, level.counts[np.maximum(found, 0)], 0.0)
            return counts / level.context_total[0]
        p = np.full(w.shape, 1.0 / V)
        for level, ctx in zip(self._levels, contexts, strict=True):
            if len(level.keys) == 0:  # no k-gram in train: every context unseen, back off
                continue
            known = ctx >= 0
            c = np.maximum(ctx, 0)
            total = np.where(known, level.context_total[c], 0.0)
            types = level.context_types[c]
            found = _lookup(level.keys, c * V + w, known)
            a = np.where(found >= 0, level.counts[np.maximum(found, 0)], 0.0)
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            p = np.where(seen, (np.maximum(a - D, 0.0) + D * types * p) / safe, p)
        return p

    def _context_ids(self, s: np.ndarray) -> list[np.ndarray]:
        """Per order k, the id of the k-1 words before each position of ``s`` (-1: unseen or
        before the stream start), plus one extra position after the end."""
        V = self.vocab_size
        out = [np.zeros(len(s) + 1, dtype=np.int64)]
        for level in self._levels[:-1]:
            prev = out[-1]
            gram = _lookup(level.keys, prev[:-1] * V + s, prev[:-1] >= 0)
            out.append(np.concatenate([[-1], gram]))
        return out

    def log_prob(self, stream: object) -> np.ndarray:
        """float64 log p(s_k | the up-to-(n-1) tokens before it) for every token [N] (-inf for
        probability 0, possible only with order 1)."""
        self._check_fitted()
        s = _as_stream(stream, self.vocab_size, "stream")
        contexts = [c[:-1] for c in self._context_ids(s)]
        with np.errstate(divide="ignore"):
            return np.log(self._probs(contexts, s))

    def distribution(self, context: object) -> np.ndarray:
        """p(. | context) over the vocabulary [V] (float64); only the last n-1 ids of
        ``context`` matter, and a shorter (even empty) context is treated like the stream
        start: the missing words are an unseen history."""
        self._check_fitted()
        ctx = _as_stream(context, self.vocab_size, "context", allow_empty=True)
        last = [c[-1:] for c in self._context_ids(ctx)]
        return self._probs(last, np.arange(self.vocab_size, dtype=np.int64))

    def score(self, stream: object) -> Perplexity:
        """Perplexity exp(-mean_k log p(s_k | context)) over every token of ``stream``."""
        log_probs = self.log_prob(stream)
        mean = float(log_probs.mean())
        ppl = math.exp(-mean) if -mean < 709 else math.inf
        return Perplexity(perplexity=ppl, count=len(log_probs), mean_log_prob=mean)


# ----- baselines beside the HMM tables ------------------------------------------------------
@dataclass
class BaselineRow:
    """One baseline: its name, order, and perplexity per split, with fit + score seconds."""

    name: str
    order: int
    perplexity: dict[str, float]
    seconds: float


def baseline_name(order: int) -> str:
    """``unigram`` for order 1, else ``Kneser–Ney n-gram``."""
    return "unigram" if order == 1 else f"Kneser–Ney {order}-gram"


def baseline_perplexities(data: object, orders: Sequence[int] = (1, 2, 3),
                          splits: Sequence[str] = ("valid", "test"),
                          discount: float = 0.75,
                          streams: Mapping[str, np.ndarray] | None = None) -> list[BaselineRow]:
    """Fit each order on ``data.train`` (vocabulary size ``len(data.vocab)``) and score each
    split stream ``getattr(data, split)``, e.g. a :class:`~hmmlvd.data.WikiText`; or, if given,
    the ``streams`` {name: token ids} (e.g. the first N tokens of each split that an HMM was
    evaluated on), in which case ``splits`` is ignored."""
    if not orders:
        raise DataError("orders is empty: give at least one n-gram order")
    if streams is not None:
        splits = list(streams)
    if not splits:
        raise DataError("splits is empty: give at least one split name, e.g. 'test'")
    for name in ("train", "vocab", *(splits if streams is None else ())):
        if not hasattr(data, name):
            raise DataError(f"data has no {name!r} attribute (expected a WikiText-like object)")
    vocab_size = len(data.vocab)  # type: ignore[attr-defined]
    rows = []
    for order in orders:
        start = time.perf_counter()
        model = KneserNey(vocab_size, order, discount).fit(data.train)  # type: ignore[attr-defined]
        ppl = {s: model.score(getattr(data, s) if streams is None else streams[s]).perplexity
               for s in splits}
        rows.append(BaselineRow(baseline_name(model.order), model.order, ppl,
                                time.perf_counter() - start))
    return rows


def baselines_markdown(rows: Sequence[BaselineRow]) -> str:
    """A markdown table: one row per baseline, one perplexity column per split."""
    if not rows:
        raise DataError("no baseline rows to tabulate")
    splits = list(rows[0].perplexity)
    lines = ["| model | " + " | ".join(f"{s} ppl" for s in splits) + " |",
             "|---|" + "---:|" * len(splits)]
    for row in rows:
        cells = [_fmt(row.perplexity.get(s, math.nan)) for s in splits]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else "–" if math.isnan(x) else f"{x:.1f}"
