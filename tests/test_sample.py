"""Ancestral sampling (hmmlvd.hmm.sample): empirical frequencies against brute-force
probabilities of every window, unconditional and given a prefix."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.hmm import HMM

H, V, T = 2, 3, 3
N = 20000


def chi2_threshold(df: int) -> float:
    """The 0.999 quantile of chi-square(df); without scipy a looser bound (df + 7 sqrt(2 df)),
    above the 0.999 quantile for every df >= 1."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return df + 7 * math.sqrt(2 * df)
    return float(chi2.ppf(0.999, df))


def chi2_statistic(observed: np.ndarray, probs: np.ndarray, total: int) -> tuple[float, int]:
    """Pearson's statistic, cells with expected count < 5 pooled into one; returns (stat, df)."""
    expected = probs * total
    small = expected < 5
    obs = list(observed[~small])
    exp = list(expected[~small])
    if small.any():
        obs.append(observed[small].sum())
        exp.append(expected[small].sum())
    obs, exp = np.array(obs, dtype=float), np.array(exp)
    assert (exp > 0).all()
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def window_frequencies(samples: torch.Tensor, length: int) -> np.ndarray:
    """Counts of each of the V^length windows, index = base-V number of the window."""
    codes = torch.zeros(samples.shape[0], dtype=torch.long)
    for t in range(length):
        codes = codes * V + samples[:, t]
    return np.bincount(codes.numpy(), minlength=V**length)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_sample_frequencies_match_brute_force(make_hmm, brute_log_prob, homogeneous):
    hmm = make_hmm(H, V, T, homogeneous, seed=71, sharpness=1.5)
    samples = hmm.sample(N, generator=torch.Generator().manual_seed(72))
    assert samples.shape == (N, T) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < V
    windows = list(itertools.product(range(V), repeat=T))
    probs = np.array([math.exp(brute_log_prob(hmm, w)) for w in windows])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    stat, df = chi2_statistic(window_frequencies(samples, T), probs, N)
    assert df >= 10, "too many cells pooled for a meaningful test"
    assert stat < chi2_threshold(df), (stat, df)


def informative_hmm(homogeneous: bool) -> HMM:
    """Sticky (or, at the second step of the non-homogeneous model, switching) states that
    emit different words, so the prefix changes the distribution of the rest a lot."""
    initial = torch.tensor([0.5, 0.5])
    sticky = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    emission = torch.tensor([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]])  # [V, H]
    if homogeneous:
        return HMM(H, V, T, True, initial=initial, transition=sticky[None],
                   emission=emission[None])
    switching = torch.tensor([[0.15, 0.85], [0.75, 0.25]])
    emission_late = torch.tensor([[0.5, 0.05], [0.4, 0.15], [0.1, 0.8]])
    return HMM(H, V, T, False, initial=initial, transition=torch.stack([sticky, switching]),
               emission=torch.stack([emission, emission, emission_late]))


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("prefix", [[2], [0, 1]])
def test_conditional_sampling_matches_brute_force(brute_log_prob, homogeneous, prefix):
    hmm = informative_hmm(homogeneous)
    samples = hmm.sample(N, prefix=torch.tensor(prefix),
                         generator=torch.Generator().manual_seed(74))
    L = len(prefix)
    assert samples.shape == (N, T)
    assert (samples[:, :L] == torch.tensor(prefix)).all()
    rests = list(itertools.product(range(V), repeat=T - L))
    base = brute_log_prob(hmm, prefix)
    probs = np.array([math.exp(brute_log_prob(hmm, [*prefix, *r]) - base) for r in rests])
    marginal = np.array([sum(math.exp(brute_log_prob(hmm, [*p, *r]))
                             for p in itertools.product(range(V), repeat=L)) for r in rests])
    # precondition: the prefix matters, so sampling that ignored it would fail the test
    assert 0.5 * np.abs(probs - marginal).sum() > 0.05
    stat, df = chi2_statistic(window_frequencies(samples[:, L:], T - L), probs, N)
    assert stat < chi2_threshold(df), (stat, df)


def test_per_row_prefixes(brute_log_prob):
    """A [N, L] prefix: each row continues its own prefix."""
    hmm = informative_hmm(homogeneous=False)
    prefixes = torch.tensor([[0], [2]]).repeat(N // 2, 1)  # rows alternate 0, 2
    samples = hmm.sample(N, prefix=prefixes, generator=torch.Generator().manual_seed(76))
    assert torch.equal(samples[:, :1], prefixes)
    rests = list(itertools.product(range(V), repeat=T - 1))
    for first in (0, 2):
        rows = samples[samples[:, 0] == first]
        assert len(rows) == N // 2
        base = brute_log_prob(hmm, [first])
        probs = np.array([math.exp(brute_log_prob(hmm, [first, *r]) - base) for r in rests])
        stat, df = chi2_statistic(window_frequencies(rows[:, 1:], T - 1), probs, len(rows))
        assert stat < chi2_threshold(df), (first, stat, df)


def test_sampling_is_reproducible_with_a_generator(make_hmm):
    hmm = make_hmm(H, V, T, seed=77)
    a = hmm.sample(50, generator=torch.Generator().manual_seed(5))
    b = hmm.sample(50, generator=torch.Generator().manual_seed(5))
    c = hmm.sample(50, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_full_length_and_empty_prefix(make_hmm):
    hmm = make_hmm(H, V, T, seed=78)
    full = torch.tensor([1, 0, 2])
    assert (hmm.sample(4, prefix=full) == full).all()
    out = hmm.sample(4, prefix=torch.empty(0, dtype=torch.long),
                     generator=torch.Generator().manual_seed(1))
    assert out.shape == (4, T)


@pytest.mark.parametrize("case", ["zero samples", "row mismatch", "token outside vocabulary",
                                  "prefix too long"])
def test_sample_rejects_bad_requests(make_hmm, case):
    hmm = make_hmm(H, V, T, seed=79)
    with pytest.raises(DataError):
        if case == "zero samples":
            hmm.sample(0)
        elif case == "row mismatch":
            hmm.sample(3, prefix=torch.zeros(2, 1, dtype=torch.long))
        elif case == "token outside vocabulary":
            hmm.sample(3, prefix=torch.tensor([V]))
        else:
            hmm.sample(3, prefix=torch.zeros(T + 1, dtype=torch.long))
