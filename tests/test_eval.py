"""Evaluation (hmmlvd.hmm.eval and HMM.next_token_distribution) against slow references built
on the brute-force likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.data import TokenWindows
from hmmlvd.hmm import HMM, sliding_perplexity, sliding_token_log_probs, window_perplexity
from hmmlvd.hmm.eval import _exp_neg

H, V, T = 3, 5, 6


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("prefix_length", [1, 2, 5])
def test_next_token_distribution_is_ratio_of_likelihoods(make_hmm, windows_factory,
                                                         brute_log_prob, homogeneous,
                                                         prefix_length):
    hmm = make_hmm(H, V, T, homogeneous, seed=61)
    prefixes = windows_factory(4, prefix_length, V, seed=prefix_length)
    dist = hmm.next_token_distribution(prefixes)
    assert dist.shape == (4, V)
    torch.testing.assert_close(dist.sum(-1), torch.ones(4), rtol=0, atol=1e-5)
    for b, prefix in enumerate(prefixes.tolist()):
        base = brute_log_prob(hmm, prefix)
        want = torch.tensor([math.exp(brute_log_prob(hmm, [*prefix, w]) - base)
                             for w in range(V)], dtype=torch.float64)
        torch.testing.assert_close(dist[b].double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_empty_prefix_gives_first_token_marginal(make_hmm, brute_log_prob, homogeneous):
    hmm = make_hmm(H, V, T, homogeneous, seed=62)
    dist = hmm.next_token_distribution(torch.empty(2, 0, dtype=torch.long))
    want = torch.tensor([math.exp(brute_log_prob(hmm, [w])) for w in range(V)],
                        dtype=torch.float64)
    assert dist.shape == (2, V)
    for row in dist:
        torch.testing.assert_close(row.double(), want, rtol=1e-5, atol=1e-6)


def test_full_length_prefix_leaves_nothing_to_predict(make_hmm, windows_factory):
    hmm = make_hmm(H, V, T, seed=63)
    with pytest.raises(DataError, match="no position"):
        hmm.next_token_distribution(windows_factory(2, T, V))


def reference_sliding(hmm, stream, brute_log_prob) -> list[float]:
    """log p(s_k | up to T-1 tokens before it), one brute-force window per token."""
    out = []
    for k in range(len(stream)):
        window = [int(v) for v in stream[max(0, k - hmm.length + 1): k + 1]]
        if len(window) == 1:
            out.append(brute_log_prob(hmm, window))
        else:
            out.append(brute_log_prob(hmm, window) - brute_log_prob(hmm, window[:-1]))
    return out


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("batch_size", [7, 1024])
def test_sliding_log_probs_match_slow_reference(make_hmm, brute_log_prob, homogeneous,
                                                batch_size):
    hmm = make_hmm(H, V, T, homogeneous, seed=64)
    stream = np.random.default_rng(65).integers(0, V, size=50).astype(np.int32)
    got = sliding_token_log_probs(hmm, stream, batch_size=batch_size)
    assert got.dtype == torch.float64 and got.shape == (50,)
    want = torch.tensor(reference_sliding(hmm, stream, brute_log_prob), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 4, T, T + 1])
def test_sliding_log_probs_of_short_streams(make_hmm, brute_log_prob, size):
    hmm = make_hmm(H, V, T, seed=66)
    stream = np.random.default_rng(size).integers(0, V, size=size)
    got = sliding_token_log_probs(hmm, stream)
    assert got.shape == (size,)
    want = torch.tensor(reference_sliding(hmm, stream, brute_log_prob), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sliding_perplexity_is_exp_of_mean_negative_log_prob(make_hmm, brute_log_prob):
    hmm = make_hmm(H, V, T, seed=67)
    stream = np.random.default_rng(68).integers(0, V, size=30)
    result = sliding_perplexity(hmm, stream, batch_size=4)
    ref = reference_sliding(hmm, stream, brute_log_prob)
    assert result.count == 30
    assert result.mean_log_prob == pytest.approx(sum(ref) / 30, abs=1e-4)
    assert result.perplexity == pytest.approx(math.exp(-sum(ref) / 30), rel=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((2, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)])
def test_sliding_rejects_bad_streams(make_hmm, bad):
    with pytest.raises(DataError, match="stream"):
        sliding_token_log_probs(make_hmm(H, V, T, seed=0), bad)


def test_sliding_rejects_out_of_vocabulary_stream(make_hmm):
    stream = np.array([0, 1, V, 2, 3, 4, 0, 1])
    with pytest.raises(DataError, match="outside the vocabulary"):
        sliding_token_log_probs(make_hmm(H, V, T, seed=0), stream)


@pytest.mark.parametrize("max_windows", [None, 9])
def test_window_perplexity_matches_direct_computation(make_hmm, brute_log_prob, max_windows):
    hmm = make_hmm(H, V, T, seed=69)
    stream = np.random.default_rng(70).integers(0, V, size=40)
    windows = TokenWindows(stream, T, max_windows=max_windows, seed=1)
    result = window_perplexity(hmm, windows, batch_size=4)
    starts = range(len(stream) - T + 1) if windows.starts is None else windows.starts
    lls = [brute_log_prob(hmm, stream[s:s + T].tolist()) for s in starts]
    mean = sum(lls) / len(lls) / T
    assert result.count == len(lls) == (max_windows or len(stream) - T + 1)
    assert result.mean_log_prob == pytest.approx(mean, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(-mean), rel=1e-5)


def test_zero_probability_token_makes_it_and_what_follows_it_minus_inf(make_hmm,
                                                                        brute_log_prob):
    """A token no state emits has probability 0: log p = -inf for it and for every token whose
    context still contains it (p(ctx) = 0), never +inf or NaN; the tokens after the context
    has moved past it are finite again, and the perplexity is inf."""
    hmm = make_hmm(H, V, T, seed=71)
    emission = hmm.emission.clone()
    emission[:, 0, :] = 0.0
    emission /= emission.sum(-2, keepdim=True)
    hmm = HMM(H, V, T, initial=hmm.initial, transition=hmm.transition, emission=emission)
    stream = np.array([1, 2, 3, 0, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2])  # 0 at k = 3
    got = sliding_token_log_probs(hmm, stream, batch_size=2)
    assert torch.isneginf(got[3:3 + T]).all()  # s_3 itself and the T-1 tokens after it
    want = torch.tensor(reference_sliding(hmm, stream, brute_log_prob), dtype=torch.float64)
    finite = [*range(3), *range(3 + T, len(stream))]
    assert torch.isfinite(got[finite]).all()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)
    result = sliding_perplexity(hmm, stream)
    assert result.perplexity == math.inf and result.mean_log_prob == -math.inf


def test_exp_neg_gives_inf_instead_of_overflowing():
    assert _exp_neg(2.0) == pytest.approx(math.exp(-2.0))
    assert _exp_neg(-1000.0) == math.inf  # math.exp(1000) raises OverflowError
    assert _exp_neg(-math.inf) == math.inf


def test_sliding_perplexity_passes_dtype_and_progress_through(make_hmm, capsys):
    """The perplexity is that of the token log-probabilities with the matmuls in ``dtype``
    (bfloat16 gives a measurably different mean than float32), and a progress bar appears
    on stderr only when asked for."""
    hmm = make_hmm(H, V, T, seed=72)
    stream = np.random.default_rng(73).integers(0, V, size=40)
    for dtype in (torch.float32, torch.bfloat16):
        want = sliding_token_log_probs(hmm, stream, batch_size=4, dtype=dtype).mean().item()
        got = sliding_perplexity(hmm, stream, batch_size=4, dtype=dtype)
        assert got.mean_log_prob == pytest.approx(want, abs=1e-12)
        assert got.perplexity == pytest.approx(math.exp(-want), rel=1e-12)
    assert sliding_perplexity(hmm, stream, dtype=torch.bfloat16).mean_log_prob != \
        pytest.approx(sliding_perplexity(hmm, stream).mean_log_prob, abs=1e-6)
    capsys.readouterr()
    sliding_perplexity(hmm, stream, batch_size=4)
    assert "sliding eval" not in capsys.readouterr().err
    sliding_perplexity(hmm, stream, batch_size=4, progress=True)
    assert "sliding eval" in capsys.readouterr().err
