"""Tests of hmmlvd.pc.from_hmm: the HMM as a Hadamard circuit on the chain region graph. Its
log-likelihoods and marginals equal the HMM core's forward and brute-force enumeration of
hidden paths (tests/conftest.py), and one EM step on either gives the same parameters."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import brute_counts_fn, brute_log_prob_fn, peaked_hmm, random_windows

from hmmlvd.core.errors import ParameterError
from hmmlvd.hmm import HMM
from hmmlvd.hmm.em import expected_counts, maximize
from hmmlvd.pc import Circuit, accumulate_counts, em_step, fit_em, from_hmm, to_hmm
from hmmlvd.pc.structures import chain_region_graph, poon_domingos


def sizes() -> list[tuple[int, int, int]]:
    """(H, V, T) covering H in 1..4, V in 2..6, T in 1..5 (corners plus random draws)."""
    rng = np.random.default_rng(0)
    out = [(1, 2, 1), (4, 6, 5), (1, 6, 5), (4, 2, 1), (3, 2, 5)]
    out += [(int(rng.integers(1, 5)), int(rng.integers(2, 7)), int(rng.integers(1, 6)))
            for _ in range(7)]
    return out


SIZES = sizes()


def size_id(size) -> str:
    return "H{}-V{}-T{}".format(*size)


def copy_hmm(hmm: HMM) -> HMM:
    return HMM(hmm.num_states, hmm.vocab_size, hmm.length, hmm.homogeneous,
               initial=hmm.initial.clone(), transition=hmm.transition.clone(),
               emission=hmm.emission.clone())


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_log_likelihood_equals_hmm_forward_and_brute_force(size, homogeneous):
    h, v, t = size
    hmm = peaked_hmm(h, v, t, homogeneous=homogeneous, seed=sum(size))
    circuit = from_hmm(hmm)
    assert circuit.num_units == h and circuit.num_variables == t
    x = random_windows(6, t, v, seed=1)
    got = circuit.log_likelihood(x)
    torch.testing.assert_close(got, hmm.log_likelihood(x), rtol=1e-5, atol=1e-5)
    brute = torch.tensor([brute_log_prob_fn(hmm, row) for row in x.tolist()])
    torch.testing.assert_close(got.double(), brute.double(), rtol=1e-5, atol=1e-5)
    if v**t <= 1300:  # every window: a distribution over V^T sequences
        every = torch.tensor(list(itertools.product(range(v), repeat=t)))
        assert float(torch.logsumexp(circuit.log_likelihood(every).double(), 0)) == \
            pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_marginals_equal_brute_force_over_the_hmm(size):
    h, v, t = size
    hmm = peaked_hmm(h, v, t, seed=2 * sum(size))
    circuit = from_hmm(hmm)
    gen = torch.Generator().manual_seed(3)
    x = random_windows(8, t, v, seed=2)
    missing = torch.rand(x.shape, generator=gen) < 0.5
    missing &= missing.cumsum(1) <= 3  # at most V^3 completions to enumerate per row
    missing[0] = False
    missing[0, -1] = True
    expected = []
    for row, mask in zip(x.tolist(), missing.tolist(), strict=True):
        holes = [i for i, m in enumerate(mask) if m]
        total = 0.0
        for fill in itertools.product(range(v), repeat=len(holes)):
            full = list(row)
            for i, value in zip(holes, fill, strict=True):
                full[i] = value
            total += math.exp(brute_log_prob_fn(hmm, full))
        expected.append(math.log(total))
    got = circuit.log_likelihood(x, missing).double()
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-5,
                               atol=1e-5)
    everything = torch.ones_like(missing)  # the sum over all V^T windows is 1
    torch.testing.assert_close(circuit.log_likelihood(x, everything), torch.zeros(len(x)))
    # a missing suffix is the HMM's prefix likelihood
    for length in range(1, t):
        suffix = torch.zeros_like(x, dtype=torch.bool)
        suffix[:, length:] = True
        torch.testing.assert_close(circuit.log_likelihood(x, suffix),
                                   hmm.log_likelihood(x[:, :length]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("step_size", "pseudocount"),
                         [(1.0, 0.0), (1.0, 1e-3), (0.5, 0.1), (0.1, 1.0), (0.8, 0.0)])
@pytest.mark.parametrize("size", SIZES[::2], ids=size_id)
def test_one_em_step_gives_the_same_parameters(size, step_size, pseudocount):
    h, v, t = size
    hmm = peaked_hmm(h, v, t, seed=3 * sum(size))
    circuit = from_hmm(copy_hmm(hmm))
    x = random_windows(12, t, v, seed=4)
    counts = expected_counts(hmm, x)
    maximize(hmm, counts, step_size=step_size, pseudocount=pseudocount)
    em_step(circuit, x, step_size=step_size, pseudocount=pseudocount)
    learned = to_hmm(circuit)
    for name in ("initial", "transition", "emission"):
        torch.testing.assert_close(getattr(learned, name), getattr(hmm, name), rtol=1e-4,
                                   atol=1e-5, msg=name)


@pytest.mark.parametrize("size", [(3, 4, 4), (2, 5, 3), (4, 3, 5)], ids=size_id)
def test_counts_equal_brute_force_path_enumeration(size):
    h, v, t = size
    hmm = peaked_hmm(h, v, t, seed=5)
    circuit = from_hmm(hmm)
    x = random_windows(10, t, v, seed=6)
    brute = brute_counts_fn(hmm, x)
    assert accumulate_counts(circuit, x) == pytest.approx(brute["log_likelihood"], rel=1e-5)
    np.testing.assert_allclose(circuit.root_sum.log_weight.grad[0].numpy(), brute["initial"],
                               rtol=1e-4, atol=1e-5)
    for layer, plan in zip(circuit.layers, circuit.plans, strict=True):
        step = plan.partitions[0].parent[0]
        np.testing.assert_allclose(layer.log_weight.grad[0].numpy(), brute["transition"][step],
                                   rtol=1e-4, atol=1e-5)


def test_several_em_steps_on_sparse_hmm_stay_equal():
    """Zeros in the transitions and emissions (which EM without a pseudocount creates) give
    units of value zero inside the circuit: counts must stay finite and equal the HMM's."""
    hmm = peaked_hmm(3, 4, 5, seed=7)
    with torch.no_grad():
        # state 0 at position 1 always moves to state 0 at position 2, which cannot emit
        # words 0 and 1: for x_2 in {0, 1} the unit (region {1..4}, state 0) has value 0
        hmm.transition[1, 0] = torch.tensor([1.0, 0.0, 0.0])
        hmm.emission[2, :, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
        hmm.transition[2, :, 2] = 0.0
        hmm.transition[2] /= hmm.transition[2].sum(-1, keepdim=True)
        hmm.emission[3, :, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0])
        hmm.emission[0, 3] = 0.0
        hmm.emission[0] /= hmm.emission[0].sum(0, keepdim=True)
    hmm.validate()
    x = hmm.sample(40, generator=torch.Generator().manual_seed(0))
    assert bool((x[:, 2] < 2).any())
    circuit = from_hmm(copy_hmm(hmm))
    torch.testing.assert_close(circuit.log_likelihood(x), hmm.log_likelihood(x))
    for _ in range(3):
        maximize(hmm, expected_counts(hmm, x), step_size=1.0, pseudocount=0.0)
        fit_em(circuit, x, epochs=1, batch_size=16, full_batch=True, step_size=1.0,
               pseudocount=0.0, progress=False)
        circuit.check_parameters()
    learned = to_hmm(circuit)
    for name in ("initial", "transition", "emission"):
        assert torch.isfinite(getattr(learned, name)).all()
        torch.testing.assert_close(getattr(learned, name), getattr(hmm, name), rtol=1e-4,
                                   atol=1e-5, msg=name)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_round_trip(homogeneous):
    hmm = peaked_hmm(3, 5, 4, homogeneous=homogeneous, seed=8)
    back = to_hmm(from_hmm(hmm))
    assert not back.homogeneous and back.length == 4
    torch.testing.assert_close(back.initial, hmm.initial)
    torch.testing.assert_close(back.transition, hmm.transition.expand(3, 3, 3))
    torch.testing.assert_close(back.emission, hmm.emission.expand(4, 5, 3))
    x = random_windows(5, 4, 5, seed=9)
    torch.testing.assert_close(back.log_likelihood(x), hmm.log_likelihood(x))


def test_to_hmm_refuses_circuits_that_are_not_hmms():
    others = [
        Circuit(poon_domingos(2, 2, 1), 2, input="categorical", num_categories=3,
                product="hadamard"),
        Circuit(chain_region_graph(3), 2, input="categorical", num_categories=3,
                product="einsum"),
        Circuit(chain_region_graph(3), 2, input="bernoulli", product="hadamard"),
        Circuit(chain_region_graph(3), 2, input="gaussian", product="hadamard"),
        Circuit(chain_region_graph(3), 2, input="categorical", num_categories=3,
                product="hadamard", root_size=2),
    ]
    for circuit in others:
        with pytest.raises(ParameterError):
            to_hmm(circuit)


@pytest.mark.parametrize(("step_size", "pseudocount"), [(1.0, 0.1), (0.5, 0.1), (0.3, 1e-3)])
def test_zero_count_rows_keep_their_values_in_both_with_a_pseudocount(step_size, pseudocount):
    """State 2 is unreachable (initial 0, no transition into it), so its transition row and its
    emission columns get no counts at all: with a pseudocount > 0 both the HMM's M-step and the
    circuit's leave them exactly as they were, and the two models stay equal."""
    hmm = peaked_hmm(3, 5, 4, seed=11)
    with torch.no_grad():
        hmm.initial.copy_(torch.tensor([0.6, 0.4, 0.0]))
        hmm.transition[:, :, 2] = 0.0
        hmm.transition /= hmm.transition.sum(-1, keepdim=True)
    hmm.validate()
    before = {k: v.clone() for k, v in hmm.parameters().items()}
    circuit = from_hmm(copy_hmm(hmm))
    x = hmm.sample(30, generator=torch.Generator().manual_seed(1))
    counts = expected_counts(hmm, x)
    assert float(counts.transition[:, 2].sum()) == 0.0 and float(
        counts.state_totals[:, 2].sum()) == 0.0
    maximize(hmm, counts, step_size=step_size, pseudocount=pseudocount)
    em_step(circuit, x, step_size=step_size, pseudocount=pseudocount)
    assert torch.equal(hmm.transition[:, 2], before["transition"][:, 2])
    assert torch.equal(hmm.emission[:, :, 2], before["emission"][:, :, 2])
    assert not torch.equal(hmm.transition[:, 0], before["transition"][:, 0])  # rows that saw data
    learned = to_hmm(circuit)
    for name in ("initial", "transition", "emission"):
        torch.testing.assert_close(getattr(learned, name), getattr(hmm, name), rtol=1e-4,
                                   atol=1e-5, msg=name)
