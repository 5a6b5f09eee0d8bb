"""A homogeneous HMM agrees with hmmlearn's CategoricalHMM on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

hmm_module = pytest.importorskip("hmmlearn.hmm")

from hmmlvd.hmm import expected_counts  # noqa: E402

H, V, T = 4, 7, 10


def _to_hmmlearn(hmm):
    """CategoricalHMM with our parameters (renormalised in float64, as hmmlearn checks sums)."""
    start = hmm.initial.double().numpy()
    trans = hmm.transition[0].double().numpy()
    emis = hmm.emission[0].T.double().numpy()  # [H, V]
    ref = hmm_module.CategoricalHMM(n_components=H, n_features=V, init_params="", params="")
    ref.startprob_ = start / start.sum()
    ref.transmat_ = trans / trans.sum(1, keepdims=True)
    ref.emissionprob_ = emis / emis.sum(1, keepdims=True)
    return ref


@pytest.fixture
def models(make_hmm):
    hmm = make_hmm(H, V, T, homogeneous=True, seed=31)
    return hmm, _to_hmmlearn(hmm)


def test_score_of_concatenated_windows_with_lengths_matches_sum(models, windows_factory):
    hmm, ref = models
    x = windows_factory(6, T, V, seed=33)
    want = ref.score(x.numpy().reshape(-1, 1), lengths=[T] * 6)
    assert hmm.log_likelihood(x).double().sum().item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("length", [T, 1, 3, 7])
def test_score_of_each_window_matches(models, windows_factory, length):
    """Full windows, and windows shorter than T scored as hmmlearn scores such a sequence."""
    hmm, ref = models
    x = windows_factory(5, length, V, seed=length)
    got = hmm.log_likelihood(x).double().numpy()
    want = np.array([ref.score(row.reshape(-1, 1)) for row in x.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_expected_state_counts_match_hmmlearn_posteriors(models, windows_factory):
    """Initial counts = sum of p(z_1 | x); per-state emission totals = sum of p(z_t | x)."""
    hmm, ref = models
    x = windows_factory(8, T, V, seed=34)
    counts = expected_counts(hmm, x)
    posteriors = [ref.predict_proba(row.reshape(-1, 1)) for row in x.numpy()]  # [T, H] each
    want_initial = sum(p[0] for p in posteriors)
    want_totals = sum(p.sum(0) for p in posteriors)
    np.testing.assert_allclose(counts.initial.double().numpy(), want_initial, atol=1e-4)
    np.testing.assert_allclose(counts.state_totals[0].double().numpy(), want_totals, atol=1e-3)
    assert counts.log_likelihood == pytest.approx(
        ref.score(x.numpy().reshape(-1, 1), lengths=[T] * 8), rel=1e-5)
    assert torch.isfinite(counts.transition).all()
