"""n-gram baselines (hmmlvd.ngram): normalisation, a hand-computed Kneser–Ney case, and a slow
plain-Python dict reference of the same formulas that shares no code with the library."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmlvd.core.errors import DataError
from hmmlvd.ngram import (
    KneserNey,
    NGramConfig,
    baseline_perplexities,
    baselines_markdown,
)


# ----- the reference: plain Python over tuples ----------------------------------------------
class ReferenceKN:
    """Interpolated Kneser–Ney (one discount) or, for order 1, the unigram MLE, straight from
    the formulas with dicts of tuples. ``prob(w, history)`` uses the last n-1 words of the
    history; a shorter history (stream start) is the order len(history)+1 distribution."""

    def __init__(self, train: list[int], vocab_size: int, order: int, discount: float):
        self.V, self.n, self.D = vocab_size, order, discount
        self.total = len(train)
        self.counts = {k: Counter(tuple(train[i - k + 1:i + 1]) for i in range(k - 1, len(train)))
                       for k in range(1, order + 2)}

    def a(self, gram: tuple[int, ...]) -> int:
        """Raw count at the highest order, else the number of distinct left extensions."""
        if len(gram) == self.n:
            return self.counts[self.n][gram]
        return len({g[0] for g in self.counts[len(gram) + 1] if g[1:] == gram})

    def p(self, w: int, h: tuple[int, ...]) -> float:
        """p_k(w | h) with k = len(h) + 1; p_0 = 1/V."""
        lower = self.p(w, h[1:]) if h else 1.0 / self.V
        total = sum(self.a((*h, x)) for x in range(self.V))
        if total == 0:
            return lower
        types = sum(1 for x in range(self.V) if self.a((*h, x)) > 0)
        return max(self.a((*h, w)) - self.D, 0) / total + self.D * types / total * lower

    def prob(self, w: int, history: list[int]) -> float:
        if self.n == 1:
            return self.counts[1][(w,)] / self.total
        return self.p(w, tuple(history[-(self.n - 1):]) if history else ())

    def log_probs(self, stream: list[int]) -> list[float]:
        out = []
        for i, w in enumerate(stream):
            p = self.prob(w, stream[:i])
            out.append(math.log(p) if p > 0 else -math.inf)
        return out


def random_corpus(rng: np.random.Generator, vocab_size: int, length: int) -> np.ndarray:
    """Zipf-ish ids with some repeated phrases, so that higher-order counts exceed 1; the
    last id of the vocabulary never occurs (an unseen word)."""
    probs = 1.0 / np.arange(1, vocab_size)
    ids = rng.choice(vocab_size - 1, size=length, p=probs / probs.sum())
    phrase = ids[:3].copy()
    for start in rng.choice(max(length - 3, 1), size=length // 10):
        ids[start:start + 3] = phrase[:len(ids[start:start + 3])]
    return ids.astype(np.int64)


def contexts_to_check(train: np.ndarray, vocab_size: int, order: int,
                      rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every context of length < order when there are few, else those seen in train plus
    random ones (mostly unseen) of each length."""
    out: set[tuple[int, ...]] = set()
    for k in range(order):
        if vocab_size ** k <= 64:
            out.update(itertools.product(range(vocab_size), repeat=k))
        else:
            out.update(tuple(train[i:i + k].tolist()) for i in range(len(train) - k + 1))
            out.update(tuple(rng.integers(vocab_size, size=k).tolist()) for _ in range(20))
    return sorted(out)


# ----- normalisation ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(vocab_size=st.integers(2, 8), order=st.integers(1, 4),
       discount=st.floats(0.05, 0.95), data=st.data())
def test_every_distribution_sums_to_one(vocab_size, order, discount, data):
    train = np.array(data.draw(st.lists(st.integers(0, vocab_size - 1), min_size=1,
                                        max_size=40)), dtype=np.int64)
    model = KneserNey(vocab_size, order, discount).fit(train)
    rng = np.random.default_rng(len(train))
    for ctx in contexts_to_check(train, vocab_size, order, rng):
        dist = model.distribution(list(ctx))
        assert dist.shape == (vocab_size,)
        assert dist.dtype == np.float64
        assert (dist >= 0).all()
        if order >= 2:  # the uniform floor makes every probability positive
            assert (dist > 0).all()
        np.testing.assert_allclose(dist.sum(), 1.0, rtol=0, atol=1e-12, err_msg=str(ctx))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_corpora_normalise_including_unseen_contexts(order, seed):
    rng = np.random.default_rng(100 + seed)
    vocab_size = 5 + seed
    train = random_corpus(rng, vocab_size, 80)
    model = KneserNey(vocab_size, order).fit(train)
    unseen_word = vocab_size - 1  # never in train: every context containing it is unseen
    contexts = [*contexts_to_check(train, vocab_size, order, rng),
                (unseen_word,) * (order - 1), (unseen_word,) * (order + 2)]
    for ctx in contexts:
        np.testing.assert_allclose(model.distribution(list(ctx)).sum(), 1.0, rtol=0, atol=1e-12)


# ----- a case computed by hand ----------------------------------------------------------------
def test_hand_computed_bigram_on_a_b_a_b_c():
    a, b, c, d = range(4)  # V = 4, d never occurs
    D = 0.75
    model = KneserNey(4, order=2, discount=D).fit([a, b, a, b, c])
    # bigram counts: ab 2, ba 1, bc 1.  Continuation counts N1+(.w) (distinct left words):
    # a <- {b}: 1, b <- {a}: 1, c <- {b}: 1, d: 0; N1+(..) = 3 bigram types, 3 words with N1+ > 0.
    cont_total, cont_types = 3, 3
    p1 = {w: max(n - D, 0) / cont_total + D * cont_types / cont_total / 4
          for w, n in {a: 1, b: 1, c: 1, d: 0}.items()}
    assert p1[a] == pytest.approx(0.25 / 3 + 0.1875)
    assert p1[d] == pytest.approx(0.1875)
    # context a: c(a.) = 2 (ab twice), one follower type.
    after_a = {w: max(n - D, 0) / 2 + D * 1 / 2 * p1[w]
               for w, n in {a: 0, b: 2, c: 0, d: 0}.items()}
    # context b: c(b.) = 2 (ba, bc), two follower types.
    after_b = {w: max(n - D, 0) / 2 + D * 2 / 2 * p1[w]
               for w, n in {a: 1, b: 0, c: 1, d: 0}.items()}
    assert after_a[b] == pytest.approx(0.625 + 0.375 * (0.25 / 3 + 0.1875))
    assert after_b[d] == pytest.approx(0.75 * 0.1875)

    np.testing.assert_allclose(model.distribution([a]), [after_a[w] for w in range(4)], rtol=1e-12)
    np.testing.assert_allclose(model.distribution([b]), [after_b[w] for w in range(4)], rtol=1e-12)
    # c occurs only at the end (never a context) and d never: both back off wholly to p1,
    # and so does the empty context.
    for ctx in ([c], [d], []):
        np.testing.assert_allclose(model.distribution(ctx), [p1[w] for w in range(4)], rtol=1e-12)
    # The stream start has no history: its first token gets p1.
    want = [p1[a], after_a[b], after_b[a], after_a[b], after_b[c]]
    np.testing.assert_allclose(model.log_prob([a, b, a, b, c]), np.log(want), rtol=1e-12)
    score = model.score([a, b, a, b, c])
    assert score.count == 5
    assert score.mean_log_prob == pytest.approx(np.log(want).mean(), rel=1e-12)
    assert score.perplexity == pytest.approx(math.exp(-np.log(want).mean()), rel=1e-12)


def test_hand_computed_trigram_continuation_level():
    a, b, c = range(3)
    D = 0.5
    model = KneserNey(3, order=3, discount=D).fit([a, b, c, a, b, a])
    # trigrams: abc, bca, cab, aba (each once). Context "a b": followers c, a -> c(ab.) = 2.
    # Middle level, continuation counts N1+(.xw) from the trigram types:
    #   bc <- {a}, ca <- {b}, ab <- {c}, ba <- {a}: each 1 (and no others).
    # Context b: N1+(.b.) = 2 (bc, ba), two types.  Unigram level N1+(.w) from the bigram
    # types ab, bc, ca, ba: a <- {c, b}: 2, b <- {a}: 1, c <- {b}: 1; N1+(..) = 4, 3 types.
    p1 = {w: max(n - D, 0) / 4 + D * 3 / 4 / 3 for w, n in {a: 2, b: 1, c: 1}.items()}
    p2_b = {w: max(n - D, 0) / 2 + D * 2 / 2 * p1[w] for w, n in {a: 1, b: 0, c: 1}.items()}
    p3_ab = {w: max(n - D, 0) / 2 + D * 2 / 2 * p2_b[w] for w, n in {a: 1, b: 0, c: 1}.items()}
    assert [p1[a], p1[b], p1[c]] == pytest.approx([0.5, 0.25, 0.25])
    assert [p2_b[a], p2_b[b], p2_b[c]] == pytest.approx([0.5, 0.125, 0.375])
    assert [p3_ab[a], p3_ab[b], p3_ab[c]] == pytest.approx([0.5, 0.0625, 0.4375])
    np.testing.assert_allclose(model.distribution([a, b]), [p3_ab[w] for w in range(3)],
                               rtol=1e-12)
    np.testing.assert_allclose(model.distribution([b]), [p2_b[w] for w in range(3)], rtol=1e-12)
    np.testing.assert_allclose(model.distribution([]), [p1[w] for w in range(3)], rtol=1e-12)
    # "b b" is an unseen trigram context: back off wholly to the middle level's context b.
    np.testing.assert_allclose(model.distribution([b, b]), [p2_b[w] for w in range(3)],
                               rtol=1e-12)


# ----- against the brute-force reference ----------------------------------------------------
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_matches_plain_python_reference(order, seed):
    rng = np.random.default_rng(seed)
    vocab_size = int(rng.integers(5, 9))
    discount = [0.75, 0.3, 0.9, 0.5][seed]
    train = random_corpus(rng, vocab_size, int(rng.integers(20, 70)))
    test = np.concatenate([random_corpus(rng, vocab_size, 30),
                           rng.integers(vocab_size, size=15)])  # includes the unseen word
    model = KneserNey(vocab_size, order, discount).fit(train)
    ref = ReferenceKN(train.tolist(), vocab_size, order, discount)
    for stream in (test, train):
        np.testing.assert_allclose(model.log_prob(stream), ref.log_probs(stream.tolist()),
                                   rtol=1e-12, atol=0)
    for ctx in contexts_to_check(train, vocab_size, order, rng)[:60]:
        want = [ref.prob(w, list(ctx)) for w in range(vocab_size)]
        np.testing.assert_allclose(model.distribution(list(ctx)), want, rtol=1e-12, atol=0)


def test_log_prob_matches_distribution_at_every_position():
    rng = np.random.default_rng(7)
    vocab_size = 6
    train = random_corpus(rng, vocab_size, 60)
    stream = rng.integers(vocab_size, size=25)
    for order in (1, 2, 3, 4):
        model = KneserNey(vocab_size, order).fit(train)
        got = model.log_prob(stream)
        assert got.shape == (len(stream),) and got.dtype == np.float64
        for i, w in enumerate(stream):
            context = stream[max(0, i - order + 1):i]  # the first tokens: shorter contexts
            with np.errstate(divide="ignore"):
                want = np.log(model.distribution(context)[w])
            assert got[i] == pytest.approx(want, rel=1e-12), (order, i)
            # only the last order-1 words matter
            np.testing.assert_array_equal(model.distribution(stream[:i]),
                                          model.distribution(context))


# ----- unigram ------------------------------------------------------------------------------
def test_unigram_is_counts_over_total_and_unseen_word_is_inf():
    train = [0, 1, 1, 2, 2, 2, 1, 0, 2]
    model = KneserNey(4, order=1).fit(np.array(train, dtype=np.int32))
    counts = np.bincount(train, minlength=4)
    np.testing.assert_allclose(model.distribution([]), counts / len(train), rtol=1e-15)
    np.testing.assert_allclose(model.distribution([2, 1]), counts / len(train), rtol=1e-15)
    np.testing.assert_allclose(model.log_prob([2, 0]), np.log(counts[[2, 0]] / len(train)))
    assert model.score([2, 2, 1]).perplexity == pytest.approx(
        math.exp(-np.mean(np.log(counts[[2, 2, 1]] / len(train)))))
    assert model.log_prob([3, 1])[0] == -math.inf
    assert model.score([1, 3]).perplexity == math.inf
    # Kneser–Ney's uniform floor keeps the unseen word finite
    assert math.isfinite(KneserNey(4, order=2).fit(train).score([1, 3]).perplexity)


# ----- bad inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"order": 0}, "order must be >= 1"),
    ({"order": 2.0}, "order must be an integer"),
    ({"discount": 1.5}, "strictly between 0 and 1"),
    ({"discount": 0.0}, "strictly between 0 and 1"),
    ({"discount": 1}, "strictly between 0 and 1"),
    ({"discount": math.nan}, "strictly between 0 and 1"),
    ({"discount": "0.5"}, "must be a number"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(DataError, match=message):
        NGramConfig(**kwargs)
    with pytest.raises(DataError, match=message):
        KneserNey(5, **kwargs)


def test_config_defaults():
    assert NGramConfig() == NGramConfig(order=3, discount=0.75)
    model = KneserNey(5)
    assert (model.order, model.discount) == (3, 0.75)
    assert KneserNey.from_config(5, NGramConfig(2, 0.5)).config == NGramConfig(2, 0.5)


@pytest.mark.parametrize(("stream", "message"), [
    ([], "empty"),
    ([0, 5], r"token id 5 outside \[0, 5\)"),
    ([-1, 2], r"token id -1 outside \[0, 5\)"),
    ([[0, 1], [1, 2]], "1-D"),
    ([0.0, 1.0], "integer"),
    ([True, False], "integer"),
    (["a"], "integer"),
])
def test_bad_streams_raise(stream, message):
    with pytest.raises(DataError, match=message):
        KneserNey(5, 2).fit(stream)
    model = KneserNey(5, 2).fit([0, 1, 2])
    with pytest.raises(DataError, match=message):
        model.log_prob(stream)
    if stream:  # an empty context is allowed
        with pytest.raises(DataError, match=message):
            model.distribution(stream)


def test_unfitted_and_bad_vocab_size():
    with pytest.raises(DataError, match="not fitted"):
        KneserNey(5).log_prob([1])
    with pytest.raises(DataError, match="vocab_size must be >= 1"):
        KneserNey(0)


def test_training_stream_shorter_than_order():
    model = KneserNey(5, order=4).fit([2, 3])
    for ctx in ([], [2], [2, 3], [3, 3, 3]):
        np.testing.assert_allclose(model.distribution(ctx).sum(), 1.0, rtol=0, atol=1e-12)
    ref = ReferenceKN([2, 3], 5, 4, 0.75)
    np.testing.assert_allclose(model.log_prob([2, 3, 2, 4]), ref.log_probs([2, 3, 2, 4]),
                               rtol=1e-12)
    # a single token has no bigram at all: the unigram level is uniform
    np.testing.assert_allclose(KneserNey(5, 2).fit([1]).distribution([]), np.full(5, 0.2))


# ----- baseline table -----------------------------------------------------------------------
def test_baseline_perplexities_and_markdown():
    rng = np.random.default_rng(3)
    data = SimpleNamespace(vocab=list("abcdefg"), train=random_corpus(rng, 7, 200),
                           valid=random_corpus(rng, 7, 50),
                           test=np.array([0, 1, 6, 2]))  # 6 never in train
    rows = baseline_perplexities(data, orders=(1, 2, 3), splits=("valid", "test"))
    assert [r.name for r in rows] == ["unigram", "Kneser–Ney 2-gram", "Kneser–Ney 3-gram"]
    for row in rows:
        model = KneserNey(7, row.order).fit(data.train)
        for split in ("valid", "test"):
            assert row.perplexity[split] == model.score(getattr(data, split)).perplexity
        assert row.seconds >= 0
    assert rows[0].perplexity["test"] == math.inf
    table = baselines_markdown(rows)
    lines = table.splitlines()
    assert lines[0] == "| model | valid ppl | test ppl |"
    assert lines[2].startswith("| unigram | ") and lines[2].endswith(" | inf |")
    assert f"{rows[2].perplexity['valid']:.1f}" in lines[4]
    with pytest.raises(DataError, match="no 'dev' attribute"):
        baseline_perplexities(data, splits=("dev",))
    with pytest.raises(DataError, match="orders is empty"):
        baseline_perplexities(data, orders=())


@pytest.mark.slow
def test_wikitext_baselines_are_ordered(shared_wikitext):
    from hmmlvd.data import load_wikitext

    data = load_wikitext(shared_wikitext)
    rows = baseline_perplexities(data, orders=(1, 2, 3), splits=("test",))
    test_ppl = [r.perplexity["test"] for r in rows]
    assert all(math.isfinite(p) for p in test_ppl)
    assert test_ppl[0] > test_ppl[1] > test_ppl[2] > 1
