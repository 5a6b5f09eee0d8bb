"""Numerical edge cases of the scaled forward pass against an independent float64 reference:
long products at T = 32 with H = 4096 states (very peaked and very flat parameters), H = 1,
T = 1, and tokens never seen in training (a pseudocount keeps perplexity finite).

Stated tolerance: log-likelihoods agree with the float64 reference to a relative 2e-6 (plus an
absolute 1e-5 nats for values near 0). Measured: about 5e-8, the float32 rounding of the result.

Not repeated here (see tests/test_forward.py): brute-force agreement at tiny sizes, H = 512
homogeneous and non-homogeneous at T = 32, impossible tokens giving -inf rather than NaN.
The HMM stores its parameters in float32 only (no float16/bfloat16 storage), so there is no
half-precision case to test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmmlvd.data import TokenWindows
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import (
    HMM,
    HMMConfig,
    mle_from_labels,
    sliding_perplexity,
    train,
    window_perplexity,
)

RTOL, ATOL = 2e-6, 1e-5
FLOAT32_TINY_LOG = math.log(torch.finfo(torch.float32).tiny)  # about -87.3


# ----- independent float64 references ------------------------------------------------------
def _position(hmm: HMM, t: int) -> int:
    return 0 if hmm.homogeneous else t


def reference_logsumexp(hmm: HMM, x: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] by the plain log-space forward in float64 with torch.logsumexp over an
    [B, H, H] tensor (small H only)."""
    log_init = hmm.initial.double().log()
    log_trans = hmm.transition.double().log()
    log_emit = hmm.emission.double().log()
    log_alpha = log_init + log_emit[_position(hmm, 0)][x[:, 0]]
    for t in range(1, x.shape[1]):
        step = log_alpha.unsqueeze(2) + log_trans[_position(hmm, t - 1)].unsqueeze(0)
        log_alpha = torch.logsumexp(step, dim=1) + log_emit[_position(hmm, t)][x[:, t]]
    return torch.logsumexp(log_alpha, dim=1)


def reference_shifted(hmm: HMM, x: torch.Tensor) -> torch.Tensor:
    """The same log-space forward in float64 with each step as a matmul of exp(log_alpha - max)
    (exact in float64, and no [B, H, H] tensor: usable at H = 4096)."""
    trans = hmm.transition.double()
    log_emit = hmm.emission.double().log()
    log_alpha = hmm.initial.double().log() + log_emit[_position(hmm, 0)][x[:, 0]]
    for t in range(1, x.shape[1]):
        top = log_alpha.amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)
        log_alpha = (top + ((log_alpha - top).exp() @ trans[_position(hmm, t - 1)]).log()
                     + log_emit[_position(hmm, t)][x[:, t]])
    return torch.logsumexp(log_alpha, dim=1)


def softmax_hmm(num_states: int, vocab_size: int, length: int, sharpness: float,
                homogeneous: bool = True, seed: int = 0) -> HMM:
    """Distributions softmax(sharpness * N(0, 1)): sharpness 20 makes them very peaked (a few
    percent of the float32 entries are exactly 0), 1e-3 very flat."""
    gen = torch.Generator().manual_seed(seed)
    pa, pb = (1, 1) if homogeneous else (length - 1, length)

    def draw(*shape: int, dim: int) -> torch.Tensor:
        return torch.softmax(sharpness * torch.randn(*shape, generator=gen), dim=dim)

    return HMM(num_states, vocab_size, length, homogeneous,
               initial=draw(num_states, dim=0),
               transition=draw(pa, num_states, num_states, dim=-1),
               emission=draw(pb, vocab_size, num_states, dim=-2))


def windows(batch: int, length: int, vocab_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator()
                         .manual_seed(seed))


def assert_matches_reference(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.isfinite(got).all(), got
    assert torch.isfinite(want).all(), want
    torch.testing.assert_close(got.double(), want, rtol=RTOL, atol=ATOL)


def test_the_two_references_agree():
    """The shifted-matmul reference used at H = 4096 equals the logsumexp one (and both
    differ from the library's scaled forward in method)."""
    for homogeneous in (True, False):
        hmm = softmax_hmm(48, 7, 12, sharpness=6.0, homogeneous=homogeneous, seed=3)
        x = windows(5, 12, 7)
        torch.testing.assert_close(reference_shifted(hmm, x), reference_logsumexp(hmm, x),
                                   rtol=1e-12, atol=1e-10)


# ----- T = 32, H = 4096 ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["very peaked", "very flat"])
def test_long_products_with_4096_states(case):
    """T = 32, H = 4096, V = 8 (homogeneous: one 64 MB transition matrix), 3 random windows."""
    sharpness = {"very peaked": 20.0, "very flat": 1e-3}[case]
    hmm = softmax_hmm(4096, 8, 32, sharpness, seed=11)
    x = windows(3, 32, 8, seed=12)
    got, want = hmm.log_likelihood(x), reference_shifted(hmm, x)
    assert_matches_reference(got, want)
    if case == "very peaked":
        assert (hmm.transition == 0).any(), "test needs zero probabilities"
        assert (want < FLOAT32_TINY_LOG).all(), "test needs p(x) below float32's range"
    else:
        assert (want - (-32 * math.log(8))).abs().max() < 1e-2  # nearly V^-T


def test_exactly_uniform_parameters_give_minus_t_log_v():
    """Closed form: uniform transitions and emissions give p(x) = V^-T for every window."""
    h, v, t = 4096, 8, 32
    hmm = HMM(h, v, t, homogeneous=True, initial=torch.full((h,), 1 / h),
              transition=torch.full((1, h, h), 1 / h), emission=torch.full((1, v, h), 1 / v))
    got = hmm.log_likelihood(windows(3, t, v)).double()
    torch.testing.assert_close(got, torch.full((3,), -t * math.log(v), dtype=torch.float64),
                               rtol=RTOL, atol=0)


# ----- H = 1 and T = 1 -------------------------------------------------------------------------
def test_single_state_at_t32():
    """H = 1 over 32 positions (non-homogeneous), peaked emissions: log p(x) is a sum of 32
    logs, some of tiny probabilities."""
    hmm = softmax_hmm(1, 8, 32, sharpness=8.0, homogeneous=False, seed=21)
    x = windows(6, 32, 8, seed=22)
    want = torch.stack([hmm.emission[torch.arange(32), row, 0].double().log().sum()
                        for row in x])
    assert_matches_reference(hmm.log_likelihood(x), want)
    assert_matches_reference(hmm.log_likelihood(x), reference_logsumexp(hmm, x))


@pytest.mark.parametrize("sharpness", [20.0, 1e-3])
def test_single_position_with_4096_states(sharpness):
    hmm = softmax_hmm(4096, 8, 1, sharpness, homogeneous=False, seed=31)
    x = torch.arange(8).unsqueeze(1)
    assert_matches_reference(hmm.log_likelihood(x), reference_shifted(hmm, x))


def test_sliding_perplexity_of_a_single_position_model():
    """T = 1: every token is predicted from no context, p(s_k) = sum_h initial[h] e[s_k, h]
    (this raised IndexError before: the sliding pass read a context column that T = 1 lacks)."""
    hmm = softmax_hmm(5, 4, 1, sharpness=3.0, homogeneous=False, seed=41)
    stream = np.array([0, 3, 1, 1, 2, 0, 3])
    want = reference_logsumexp(hmm, torch.as_tensor(stream).unsqueeze(1))
    result = sliding_perplexity(hmm, stream, batch_size=3)
    assert result.count == len(stream)
    assert result.mean_log_prob == pytest.approx(want.mean().item(), rel=RTOL)


# ----- tokens never seen in training ---------------------------------------------------------
V, T, H = 8, 4, 3
SEEN = 5  # training data uses words 0..4; words 5, 6, 7 are never seen


def _training_data(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, SEEN, size=(n, T))
    labels = rng.integers(0, H, size=(n, T))
    return tokens, labels


def _unseen_stream() -> np.ndarray:
    """A test stream starting with and containing unseen words."""
    return np.array([7, 0, 1, 5, 2, 3, 6, 4, 0, 7, 1, 2])


@pytest.mark.parametrize("homogeneous", [False, True])
def test_mle_with_pseudocount_keeps_unseen_tokens_finite(homogeneous):
    tokens, labels = _training_data()
    config = HMMConfig(H, V, T, homogeneous)
    hmm = mle_from_labels(tokens, labels, config, pseudocount=1e-3)
    stream = _unseen_stream()
    sliding = sliding_perplexity(hmm, stream, batch_size=4)
    window = window_perplexity(hmm, TokenWindows(stream, T), batch_size=4)
    assert math.isfinite(sliding.perplexity) and math.isfinite(window.perplexity)
    assert sliding.perplexity > V  # unseen words are (rightly) very unlikely
    # without the pseudocount the same words have probability 0: -inf, never NaN
    bare = mle_from_labels(tokens, labels, config, pseudocount=0.0)
    log_lik = bare.log_likelihood(TokenWindows(stream, T)[:])
    assert not torch.isnan(log_lik).any() and torch.isneginf(log_lik).any()
    assert sliding_perplexity(bare, stream).perplexity == math.inf


@pytest.mark.parametrize("full_batch", [False, True])
def test_em_with_pseudocount_makes_unseen_tokens_finite(full_batch):
    """Start from a model that gives unseen words probability exactly 0 (MLE without
    pseudocount), train EM with a pseudocount on data without them: perplexity on text with
    them becomes finite. EM without a pseudocount leaves them at 0."""
    tokens, labels = _training_data()
    stream = _unseen_stream()
    train_windows = TokenWindows(tokens.reshape(-1), T)
    for pseudocount, finite in ((1e-3, True), (0.0, False)):
        hmm = mle_from_labels(tokens, labels, HMMConfig(H, V, T), pseudocount=0.0)
        assert sliding_perplexity(hmm, stream).perplexity == math.inf
        config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=16,
                          pseudocount=pseudocount, full_batch=full_batch)
        train(hmm, train_windows, config, progress=False)
        hmm.validate()
        assert math.isfinite(sliding_perplexity(hmm, stream).perplexity) == finite
        log_lik = hmm.log_likelihood(TokenWindows(stream, T)[:])
        assert not torch.isnan(log_lik).any()
        assert bool(torch.isfinite(log_lik).all()) == finite
