"""The forward algorithm (hmmlvd.hmm.forward via HMM.run_forward / HMM.log_likelihood) against
brute-force enumeration of hidden paths and an independent float64 log-space recursion."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import path_joints
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmlvd.hmm import HMM, forward


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_likelihood_matches_brute_force(make_hmm, windows_factory, brute_log_prob,
                                            homogeneous, seed):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=seed)
    x = windows_factory(16, 4, 5, seed=seed + 10)
    got = hmm.log_likelihood(x)
    want = torch.tensor([brute_log_prob(hmm, row) for row in x.tolist()], dtype=torch.float64)
    assert got.shape == (16,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("prefix_length", [1, 2, 3])
def test_log_likelihood_of_prefixes_matches_brute_force(make_hmm, windows_factory,
                                                        brute_log_prob, homogeneous,
                                                        prefix_length):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=3)
    x = windows_factory(10, prefix_length, 5, seed=prefix_length)
    got = hmm.log_likelihood(x).double()
    want = torch.tensor([brute_log_prob(hmm, row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_prefix_probabilities_sum_to_one(make_hmm, homogeneous, length):
    """Summing p(x_1..x_L) over all V^L sequences gives 1 (marginalisation of the rest)."""
    hmm = make_hmm(3, 4, 4, homogeneous, seed=5)
    everything = torch.tensor(list(itertools.product(range(4), repeat=length)))
    total = hmm.log_likelihood(everything).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_log_prefix_is_cumulative_prefix_likelihood(make_hmm, windows_factory, brute_log_prob,
                                                    homogeneous):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=7)
    x = windows_factory(8, 4, 5, seed=8)
    result = hmm.run_forward(x)
    assert result.log_prefix.shape == (8, 4)
    want = torch.tensor([[brute_log_prob(hmm, row[: t + 1]) for t in range(4)]
                         for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(result.log_prefix.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_alpha_is_filtered_state_posterior(make_hmm, windows_factory, homogeneous):
    """ForwardResult.alpha = p(z_L | x_1..x_L), by grouping brute-force paths by last state."""
    hmm = make_hmm(3, 5, 4, homogeneous, seed=9)
    for length in (1, 3, 4):
        x = windows_factory(5, length, 5, seed=length)
        alpha = hmm.run_forward(x).alpha.double()
        for b, row in enumerate(x.tolist()):
            paths, joint = path_joints(hmm, row)
            want = np.bincount(paths[:, -1], weights=joint, minlength=3) / joint.sum()
            torch.testing.assert_close(alpha[b], torch.from_numpy(want), rtol=1e-5, atol=1e-6)


def test_forward_function_matches_model_entry_point(make_hmm, windows_factory):
    """Calling forward() with gathered emissions and the per-step matrices by hand gives the
    same log-likelihood as the model's entry point."""
    hmm = make_hmm(3, 5, 4, seed=11)
    x = windows_factory(6, 4, 5, seed=12)
    emissions = torch.stack([torch.stack([hmm.emission[t, w] for t, w in enumerate(row)])
                             for row in x.tolist()])
    result = forward(hmm.initial, hmm.transition, emissions)
    torch.testing.assert_close(result.log_prefix[:, -1], hmm.log_likelihood(x))


def _reference_log_likelihood(hmm: HMM, x: torch.Tensor) -> torch.Tensor:
    """Plain float64 log-space forward recursion with torch.logsumexp (no scaling tricks)."""
    log_init = hmm.initial.double().log()
    log_trans = hmm.transition.double().log()
    log_emit = hmm.emission.double().log()  # [P_B, V, H]

    def emit(t: int) -> torch.Tensor:  # [B, H]
        return log_emit[0 if hmm.homogeneous else t][x[:, t]]

    log_alpha = log_init.unsqueeze(0) + emit(0)
    for t in range(1, x.shape[1]):
        a = log_trans[0 if hmm.homogeneous else t - 1]
        log_alpha = torch.logsumexp(log_alpha.unsqueeze(2) + a.unsqueeze(0), dim=1) + emit(t)
    return torch.logsumexp(log_alpha, dim=1)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_long_window_many_states_is_stable(windows_factory, homogeneous):
    """T=32, H=512, V=50 with peaked random parameters: p(x) is far below float32's smallest
    normal number, yet the scaled forward stays finite and within 2e-3 nats (absolute; the
    log-likelihoods are around -150) of a float64 log-space reference."""
    from conftest import peaked_hmm

    hmm = peaked_hmm(512, 50, 32, homogeneous, seed=21, sharpness=3.0)
    x = windows_factory(4, 32, 50, seed=22)
    got = hmm.log_likelihood(x)
    want = _reference_log_likelihood(hmm, x)
    assert (want < math.log(torch.finfo(torch.float32).tiny)).all(), "test needs underflow"
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-3)


def test_single_position_window(make_hmm, brute_log_prob):
    """T = 1: log p(x) = log sum_h initial[h] emission[0, x, h]."""
    for homogeneous in (False, True):
        hmm = make_hmm(3, 5, 1, homogeneous, seed=4)
        x = torch.arange(5).unsqueeze(1)
        want = (hmm.initial.double() * hmm.emission[0].double()).sum(-1).log()
        torch.testing.assert_close(hmm.log_likelihood(x).double(), want, rtol=1e-6, atol=1e-6)
        assert hmm.log_likelihood(x)[2].item() == pytest.approx(brute_log_prob(hmm, [2]),
                                                                  abs=1e-5)


def test_single_state_is_product_of_emissions(make_hmm, windows_factory):
    """H = 1: the hidden chain is deterministic, so log p(x) = sum_t log emission[t, x_t, 0]."""
    hmm = make_hmm(1, 6, 5, seed=2)
    x = windows_factory(7, 5, 6, seed=3)
    want = torch.stack([hmm.emission[torch.arange(5), row, 0].double().log().sum()
                        for row in x])
    torch.testing.assert_close(hmm.log_likelihood(x).double(), want, rtol=1e-6, atol=1e-5)


def _zero_token(hmm: HMM, position: int, word: int) -> HMM:
    """A copy of ``hmm`` where ``word`` has probability 0 at ``position`` in every state (its
    mass moved to another word so every distribution still sums to 1)."""
    emission = hmm.emission.clone()
    other = (word + 1) % hmm.vocab_size
    emission[position, other] += emission[position, word]
    emission[position, word] = 0
    return HMM(hmm.num_states, hmm.vocab_size, hmm.length, hmm.homogeneous,
               initial=hmm.initial, transition=hmm.transition, emission=emission)


def test_impossible_token_gives_minus_inf_not_nan(make_hmm, brute_log_prob):
    hmm = _zero_token(make_hmm(3, 5, 4, seed=6), position=2, word=1)
    x = torch.tensor([[0, 2, 1, 3], [0, 2, 3, 3], [1, 1, 2, 0]])
    log_prefix = hmm.run_forward(x).log_prefix
    assert not torch.isnan(log_prefix).any()
    # the first window is possible up to position 2 and impossible from there on
    assert torch.isfinite(log_prefix[0, :2]).all()
    assert (log_prefix[0, 2:] == -math.inf).all()
    assert torch.isfinite(log_prefix[1:]).all()
    ll = hmm.log_likelihood(x)
    assert ll[0].item() == -math.inf
    assert ll[1].item() == pytest.approx(brute_log_prob(hmm, x[1].tolist()), abs=1e-5)


def test_unreachable_emitting_state_gives_minus_inf():
    """The only state that can emit word 0 is never the first state: p(x_1 = 0) = 0."""
    initial = torch.tensor([1.0, 0.0])
    transition = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    emission = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # word 0 only from state 1
    hmm = HMM(2, 2, 2, homogeneous=True, initial=initial, transition=transition,
              emission=emission)
    ll = hmm.log_likelihood(torch.tensor([[0, 0], [1, 0], [1, 1]]))
    assert not torch.isnan(ll).any()
    assert ll[0].item() == -math.inf
    assert ll[1].item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert ll[2].item() == pytest.approx(math.log(0.5), abs=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(num_states=st.integers(1, 3), vocab_size=st.integers(1, 4), length=st.integers(1, 4),
       homogeneous=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_forward_matches_brute_force_on_random_sizes(num_states, vocab_size, length,
                                                     homogeneous, seed, data):
    from conftest import brute_log_prob_fn, peaked_hmm

    hmm = peaked_hmm(num_states, vocab_size, length, homogeneous, seed=seed)
    prefix_length = data.draw(st.integers(1, length))
    rows = data.draw(st.lists(st.lists(st.integers(0, vocab_size - 1), min_size=prefix_length,
                                       max_size=prefix_length), min_size=1, max_size=3))
    got = hmm.log_likelihood(torch.tensor(rows)).double()
    want = torch.tensor([brute_log_prob_fn(hmm, r) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_prefix_gradients_are_the_prefix_posteriors_by_default(make_hmm):
    """By default the gradient of log p(x_1..x_t) for t < L w.r.t. the gathered emissions,
    times them, is p(z_s = h | x_1..x_t) for s <= t (0 after t): the brute-force posterior of
    the prefix. Filtered states are returned only when asked for."""
    hmm = make_hmm(3, 5, 4, seed=13)
    x = [2, 0, 4, 1]
    emissions = torch.stack([hmm.emission[t, w] for t, w in enumerate(x)])[None].clone()
    emissions.requires_grad_(True)
    result = forward(hmm.initial, hmm.transition, emissions)
    assert result.states is None
    t = 1  # the prefix x_1, x_2
    result.log_prefix[0, t].backward()
    got = (emissions.grad * emissions).detach()[0].double()
    paths, joint = path_joints(hmm, x[: t + 1])
    for s in range(4):
        want = (np.bincount(paths[:, s], weights=joint, minlength=3) / joint.sum()
                if s <= t else np.zeros(3))
        torch.testing.assert_close(got[s], torch.from_numpy(want), rtol=1e-5, atol=1e-6)


def _float64_forward(initial: torch.Tensor, transitions: torch.Tensor,
                     emissions: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] by the plain normalised recursion in float64 (no per-step maxima)."""
    alpha = initial.double() * emissions[:, 0].double()
    log_p = alpha.sum(-1).log()
    alpha = alpha / alpha.sum(-1, keepdim=True)
    for t in range(1, emissions.shape[1]):
        alpha = (alpha @ transitions[t - 1].double()) * emissions[:, t].double()
        norm = alpha.sum(-1, keepdim=True)
        log_p, alpha = log_p + norm.squeeze(-1).log(), alpha / norm
    return log_p


def test_emission_columns_far_below_float32s_normal_range_keep_full_precision(make_hmm,
                                                                              windows_factory):
    """Emission factors of about 2^-146 (subnormal in float32: a few significant bits left
    after one more product) still give log p(x) to float32 precision, because each column is
    divided by its maximum before any product and its log added back."""
    hmm = make_hmm(8, 5, 6, seed=14)
    x = windows_factory(10, 6, 5, seed=15)
    emissions = hmm.gather_emissions(x) * 2.0**-140
    transitions = hmm.transitions_for(6)
    want = _float64_forward(hmm.initial, transitions, emissions)
    got = forward(hmm.initial, transitions, emissions).log_prefix[:, -1].double()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_bfloat16_normalisers_are_summed_in_float32(windows_factory):
    """In bfloat16 the forward vector's entries are rounded (relative 2^-9 each), but each
    normaliser is summed in float32, so over 32 steps at H = 256 the rounding averages out:
    log p(x) stays, on average over windows, within 2^-9 of the float64 recursion on the same
    rounded inputs. Summed in bfloat16, each normaliser would itself be rounded by up to 2^-9,
    every step (about 3 times that, measured)."""
    hmm = HMM(256, 50, 32, seed=16)
    x = windows_factory(64, 32, 50, seed=17)
    emissions = hmm.gather_emissions(x).to(torch.bfloat16)
    transitions = hmm.transitions_for(32).to(torch.bfloat16)
    want = _float64_forward(hmm.initial, transitions, emissions)
    got = forward(hmm.initial, transitions, emissions).log_prefix[:, -1].double()
    assert (got - want).abs().mean().item() < 2.0**-9


def test_states_are_the_filtered_posteriors_of_every_prefix(make_hmm, windows_factory):
    """states=True: states[b, t] = p(z_t | x_1..x_t), by grouping the brute-force paths of each
    prefix by their last state (what forward filtering, backward sampling draws from)."""
    hmm = make_hmm(3, 5, 4, seed=18)
    x = windows_factory(4, 4, 5, seed=19)
    states = forward(hmm.initial, hmm.transitions_for(4), hmm.gather_emissions(x),
                     states=True).states
    assert states.shape == (4, 4, 3)
    for b, row in enumerate(x.tolist()):
        for t in range(4):
            paths, joint = path_joints(hmm, row[: t + 1])
            want = np.bincount(paths[:, -1], weights=joint, minlength=3) / joint.sum()
            torch.testing.assert_close(states[b, t].double(), torch.from_numpy(want),
                                       rtol=1e-5, atol=1e-6)
