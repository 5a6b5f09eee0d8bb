"""Tests of hmmlvd.pc.em: EM never decreases the full-batch likelihood, mini-batch steps
interpolate, the E-step's counts equal a float64 autograd reference written in the tests
(W * dLL/dW of the independent evaluator in test_pc_circuit), closed-form Gaussian and
pseudocount updates, Adam."""

from __future__ import annotations

import copy
import importlib
import itertools
import math
import signal

import numpy as np
import pytest
import torch
from conftest import signal_during_call
from test_pc_circuit import (
    STRUCTURES,
    graph_of,
    is_binary,
    make_circuit,
    num_categories,
    padded_graph,
    reference_log_likelihood,
    reference_parameters,
)

from hmmlvd.core.errors import DataError
from hmmlvd.pc import (
    Circuit,
    accumulate_counts,
    em_step,
    fit_adam,
    fit_em,
    maximize,
    sample,
)
from hmmlvd.pc.structures import RegionGraph


def em_cases() -> list[tuple[str, str, str, int]]:
    cases = []
    for i, (name, kind) in enumerate(itertools.product(STRUCTURES,
                                                       ["categorical", "bernoulli", "gaussian"])):
        products = ["einsum", "hadamard"] if is_binary(graph_of(name)) else ["hadamard"]
        for product in products:
            cases.append((name, product, kind, 2 + i % 2))
    return cases


EM_CASES = em_cases()


def case_id(case) -> str:
    return "-".join(str(c) for c in case)


def training_data(circuit: Circuit, n: int, seed: int) -> torch.Tensor:
    """Data from a different (peaked) circuit of the same kind, or uniform for Gaussians."""
    if circuit.input_kind == "gaussian":
        return torch.rand(n, circuit.num_variables, generator=torch.Generator().manual_seed(seed))
    teacher = make_circuit(_name_of(circuit), circuit.product, circuit.input_kind, 3,
                           seed=seed + 77)
    return sample(teacher, n, seed=seed)


def _name_of(circuit: Circuit) -> str:
    return next(name for name in STRUCTURES if graph_of(name) == circuit.graph)


def mean_ll(circuit: Circuit, x: torch.Tensor, missing=None) -> float:
    return float(circuit.log_likelihood(x, missing).double().mean())


# ----------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("case", EM_CASES, ids=case_id)
def test_full_batch_em_never_decreases_the_likelihood(case):
    name, product, kind, k = case
    circuit = Circuit(graph_of(name), k, input=kind, product=product,
                      num_categories=num_categories(kind) if kind == "categorical" else None,
                      seed=EM_CASES.index(case))
    x = training_data(circuit, 200, seed=1)
    history = [mean_ll(circuit, x)]
    for _ in range(8):
        before = em_step(circuit, x, step_size=1.0, pseudocount=0.0)
        assert before == pytest.approx(history[-1], abs=1e-4)  # returns the LL before the step
        history.append(mean_ll(circuit, x))
        circuit.check_parameters()
    steps = np.diff(history)
    assert (steps >= -1e-5).all(), history
    assert history[-1] > history[0] + 1e-3  # it learned something


@pytest.mark.parametrize("case", EM_CASES[1::5], ids=case_id)
def test_full_batch_em_with_missing_values_never_decreases_the_marginal(case):
    name, product, kind, k = case
    circuit = Circuit(graph_of(name), k, input=kind, product=product,
                      num_categories=num_categories(kind) if kind == "categorical" else None,
                      seed=3)
    x = training_data(circuit, 150, seed=2)
    missing = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    history = [mean_ll(circuit, x, missing)]
    for _ in range(6):
        fit_em(circuit, x, epochs=1, batch_size=64, full_batch=True, missing=missing,
               progress=False, step_size=1.0, pseudocount=0.0)
        history.append(mean_ll(circuit, x, missing))
    assert (np.diff(history) >= -1e-5).all(), history
    assert history[-1] > history[0]


def test_fit_em_full_batch_sums_counts_over_batches():
    circuit = make_circuit("padded4", "einsum", "categorical", 3, seed=4)
    x = training_data(circuit, 130, seed=3)
    whole, batched = copy.deepcopy(circuit), copy.deepcopy(circuit)
    start = mean_ll(circuit, x)
    em_step(whole, x, 1.0, 0.01)
    history = fit_em(batched, x, epochs=1, batch_size=40, full_batch=True, pseudocount=0.01,
                     progress=False, step_size=1.0)
    assert history[0] == pytest.approx(start, abs=1e-4)
    for a, b in zip(whole.parameters(), batched.parameters(), strict=True):
        torch.testing.assert_close(a.exp(), b.exp(), rtol=0, atol=1e-5)
    # its history is the LL before each epoch's M-step, and it never decreases
    history = fit_em(batched, x, epochs=4, batch_size=40, full_batch=True, progress=False,
                     step_size=1.0, pseudocount=0.0)
    assert history[0] == pytest.approx(mean_ll(whole, x), abs=1e-4)
    assert (np.diff(history) >= -1e-5).all()


# ----------------------------------------------------------------------------- step sizes


def assert_interpolates(old: Circuit, full: Circuit, mixed: Circuit, a: float) -> None:
    """Every parameter of ``mixed`` is (1 - a) old + a full, in probability space (mean and
    variance for Gaussians)."""
    for layer_old, layer_full, layer_mixed in zip(old.sum_layers(), full.sum_layers(),
                                                  mixed.sum_layers(), strict=True):
        expected = (1 - a) * layer_old.log_weight.exp() + a * layer_full.log_weight.exp()
        torch.testing.assert_close(layer_mixed.log_weight.exp(), expected, rtol=1e-5, atol=1e-6)
    if old.input_kind == "gaussian":
        for name in ("mean",):
            expected = (1 - a) * getattr(old.input_layer, name) + a * getattr(
                full.input_layer, name)
            torch.testing.assert_close(getattr(mixed.input_layer, name), expected)
        variances = [c.input_layer.log_var.detach().exp() for c in (old, full, mixed)]
        torch.testing.assert_close(variances[2], (1 - a) * variances[0] + a * variances[1])
    else:
        probs = [c.input_layer.log_prob.exp() for c in (old, full, mixed)]
        torch.testing.assert_close(probs[2], (1 - a) * probs[0] + a * probs[1], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize(("case", "a", "pseudocount"),
                         [(("pd2x3", "einsum", "categorical", 3), 0.3, 0.0),
                          (("padded4", "hadamard", "bernoulli", 2), 0.7, 0.5),
                          (("kary4", "hadamard", "gaussian", 3), 0.5, 0.0),
                          (("rat5-2-2", "einsum", "gaussian", 2), 0.1, 0.1)])
def test_step_size_mixes_with_the_full_step(case, a, pseudocount):
    name, product, kind, k = case
    kwargs = {"max_var": 0.1} if kind == "gaussian" else {}
    old = make_circuit(name, product, kind, k, seed=5, **kwargs)
    x = training_data(old, 100, seed=4)
    full, mixed, fitted = copy.deepcopy(old), copy.deepcopy(old), copy.deepcopy(old)
    em_step(full, x, 1.0, pseudocount)
    em_step(mixed, x, a, pseudocount)
    assert_interpolates(old, full, mixed, a)
    # mini-batch fit_em with one batch is the same step (its batch is shuffled, so the sums
    # run in another order: Gaussian variances E[x^2] - E[x]^2 of nearly unused components
    # differ by float32 rounding)
    fit_em(fitted, x, epochs=1, batch_size=len(x), step_size=a, pseudocount=pseudocount,
           progress=False)
    for p, q in zip(mixed.parameters(), fitted.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- counts


COUNT_CASES = [("pd2x2", "einsum", "categorical", 2), ("padded4", "einsum", "bernoulli", 3),
               ("kary4", "hadamard", "categorical", 3), ("hclt5", "hadamard", "bernoulli", 2),
               ("rat5-2-2", "hadamard", "categorical", 2), ("pd2x3", "einsum", "gaussian", 2)]


def reference_counts(circuit: Circuit, x, missing=None) -> tuple[dict, float]:
    """Expected counts W * d(sum log p)/dW of every layer, by float64 autograd through the
    independent evaluator, and the summed log-likelihood."""
    params = reference_parameters(circuit, requires_grad=True)
    total = reference_log_likelihood(circuit, x, missing, params)[:, 0].sum()
    total.backward()
    counts = {key: [p * p.grad for p in params[key]] for key in ("layers", "mixers")}
    counts["root"] = params["root"] * params["root"].grad
    if circuit.input_kind != "gaussian":
        counts["input"] = params["input"]["prob"] * params["input"]["prob"].grad
    return counts, float(total.detach())


@pytest.mark.parametrize("case", COUNT_CASES, ids=case_id)
def test_counts_equal_float64_autograd_reference(case):
    name, product, kind, k = case
    kwargs = {"min_var": 0.02, "max_var": 0.2} if kind == "gaussian" else {}
    circuit = make_circuit(name, product, kind, k, seed=6, **kwargs)
    x = training_data(circuit, 60, seed=5)
    missing = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.25
    expected, total = reference_counts(circuit, x, missing)
    assert accumulate_counts(circuit, x, missing) == pytest.approx(total, rel=1e-5)
    for mine, ref in zip(circuit.layers, expected["layers"], strict=True):
        torch.testing.assert_close(mine.log_weight.grad.double(), ref.detach(), rtol=1e-4,
                                   atol=1e-5)
    for mine, ref in zip(circuit.mixers, expected["mixers"], strict=True):
        torch.testing.assert_close(mine.log_weight.grad.double(), ref.detach(), rtol=1e-4,
                                   atol=1e-5)
    torch.testing.assert_close(circuit.root_sum.log_weight.grad.double(),
                               expected["root"].detach(), rtol=1e-4, atol=1e-5)
    # counts sum to the number of samples at the root
    assert float(circuit.root_sum.log_weight.grad.sum()) == pytest.approx(len(x), rel=1e-5)
    if kind != "gaussian":
        # the full M-step turns the input counts into their normalised rows
        maximize(circuit, 1.0, 0.0)
        ref = expected["input"].detach()
        total_ref = ref.sum(1, keepdim=True)
        used = (total_ref > 1e-9).expand_as(ref)
        new = (ref / total_ref.clamp_min(1e-300))[used]
        torch.testing.assert_close(circuit.input_layer.log_prob.exp().double()[used], new,
                                   rtol=1e-4, atol=1e-5)


def test_counts_stay_finite_when_some_units_have_probability_zero():
    """A sample with positive probability can still have sum/product units of value zero
    (zero weights, impossible input categories); their counts are zero, never NaN."""
    circuit = make_circuit("pd2x2", "einsum", "bernoulli", 2, seed=7)
    with torch.no_grad():
        w = circuit.layers[0].log_weight
        w[0, 0] = -math.inf  # unit 0 of partition 0 only uses (left 0, right 0)
        w[0, 0, 0, 0] = 0.0
        circuit.input_layer.log_prob[0, 1, 0] = -math.inf  # leaf 0, unit 0 cannot emit 1
        circuit.input_layer.log_prob[0, 0, 0] = 0.0
        m = circuit.mixers[0].log_weight  # the root's mixing: unit 1 only uses partition 0
        m[0, 1] = torch.tensor([0.0, -math.inf])
    circuit.check_parameters()
    x = torch.tensor(list(itertools.product([0, 1], repeat=4)))
    assert torch.isfinite(circuit.log_likelihood(x)).all()
    expected, total = reference_counts(circuit, x)
    assert accumulate_counts(circuit, x) == pytest.approx(total, rel=1e-5)
    for mine, ref in zip(circuit.layers, expected["layers"], strict=True):
        assert torch.isfinite(mine.log_weight.grad).all()
        torch.testing.assert_close(mine.log_weight.grad.double(), ref.detach(), rtol=1e-4,
                                   atol=1e-5)
    for mine, ref in zip(circuit.mixers, expected["mixers"], strict=True):
        assert torch.isfinite(mine.log_weight.grad).all()
        torch.testing.assert_close(mine.log_weight.grad.double(), ref.detach(), rtol=1e-4,
                                   atol=1e-5)
    maximize(circuit)
    circuit.check_parameters()
    assert torch.isfinite(circuit.log_likelihood(x)).all()


def circuit_where_variable_2_cannot_be_1() -> Circuit:
    circuit = make_circuit("chain4", "hadamard", "categorical", 2, seed=8)
    with torch.no_grad():
        circuit.input_layer.log_prob[2, 1] = -math.inf
        circuit.input_layer.log_prob[2, 0] = math.log(0.5)
        circuit.input_layer.log_prob[2, 2] = math.log(0.5)
    return circuit


def test_em_refuses_zero_probability_samples():
    circuit = circuit_where_variable_2_cannot_be_1()
    before = copy.deepcopy(circuit)
    x = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    with pytest.raises(DataError, match=r"samples \[1\] have probability 0 under the circuit"):
        em_step(circuit, x)
    with pytest.raises(DataError, match=r"samples \[1\] have probability 0 under the circuit"):
        fit_em(circuit, x, progress=False, step_size=1.0, pseudocount=0.0)
    for p, q in zip(before.parameters(), circuit.parameters(), strict=True):
        assert torch.equal(p, q)
    # with the impossible value missing, EM is fine
    em_step(circuit, x, missing=torch.tensor([[False] * 4, [False, False, True, False]]))
    circuit.check_parameters()


def test_refused_step_leaves_no_stale_counts():
    """A step refused for its step size or pseudocount must not leave its batch's counts
    behind to be added to the next step's."""
    circuit = make_circuit("padded4", "einsum", "categorical", 2, seed=9)
    first, second = training_data(circuit, 40, seed=6), training_data(circuit, 40, seed=7)
    fresh = copy.deepcopy(circuit)
    for bad in ({"step_size": 0.0}, {"step_size": 1.5}, {"pseudocount": -1.0}):
        with pytest.raises(DataError):
            em_step(circuit, first, **bad)
    em_step(circuit, second, 1.0, 0.1)
    em_step(fresh, second, 1.0, 0.1)
    for p, q in zip(fresh.parameters(), circuit.parameters(), strict=True):
        torch.testing.assert_close(p, q)



def test_failed_full_batch_epoch_leaves_no_counts_behind():
    """A full-batch epoch that fails on a later batch must not leave the earlier batches'
    counts to be added to the next epoch's."""
    circuit = circuit_where_variable_2_cannot_be_1()
    before = copy.deepcopy(circuit)
    x = torch.tensor([[0, 0, 0, 0]] * 4 + [[1, 1, 1, 1]])
    with pytest.raises(DataError, match=r"samples \[0\] have probability 0 under the circuit"):
        fit_em(circuit, x, batch_size=2, full_batch=True, progress=False, step_size=1.0,
               pseudocount=0.0)
    assert all(layer.log_weight.grad is None for layer in circuit.sum_layers())
    good = x[:4]
    fit_em(circuit, good, batch_size=2, full_batch=True, progress=False, step_size=1.0,
           pseudocount=0.0)
    fit_em(before, good, batch_size=2, full_batch=True, progress=False, step_size=1.0,
           pseudocount=0.0)
    for p, q in zip(before.parameters(), circuit.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_pseudocount_leaves_unvisited_rows_alone():
    """Rows that got no count in a step keep their values even with a pseudocount (it
    smooths what the data reached; it does not pull the rest towards uniform)."""
    circuit = make_circuit("chain4", "hadamard", "categorical", 2, seed=3)
    layer = circuit.layers[0]  # log_weight [E, K, K], rows over the last dim
    before = layer.log_weight.detach().clone()
    counts = torch.zeros_like(before)
    counts[0, 0] = torch.tensor([3.0, 1.0])  # only row (0, 0) saw data
    layer.log_weight.grad = counts
    layer.maximize_(1.0, 0.5)
    after = layer.log_weight.detach()
    torch.testing.assert_close(after[0, 0].exp(), torch.tensor([3.5, 1.5]) / 5.0)
    assert torch.equal(after[0, 1:], before[0, 1:]) and torch.equal(after[1:], before[1:])


# ----------------------------------------------------------------------------- closed forms


def single_leaf(num_variables: int = 1) -> RegionGraph:
    return RegionGraph.from_partitions(num_variables, [],
                                       extra_regions=[tuple(range(num_variables))])


def test_gaussian_em_matches_closed_form_mixture_update():
    circuit = Circuit(single_leaf(), 2, input="gaussian", min_var=1e-6, max_var=10.0, seed=0)
    with torch.no_grad():
        circuit.input_layer.mean.copy_(torch.tensor([[-0.5, 1.5]]))
        circuit.input_layer.log_var.copy_(torch.tensor([[0.3, 0.8]]).log())
        circuit.root_sum.log_weight.copy_(torch.tensor([[0.4, 0.6]]).log())
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(80, 1, generator=gen) * 0.5 - 1,
                   torch.randn(120, 1, generator=gen) + 2])
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[::7] = True
    # closed form in float64
    xs = x[:, 0].double().numpy()
    mu, var, w = np.array([-0.5, 1.5]), np.array([0.3, 0.8]), np.array([0.4, 0.6])
    joint = w * np.exp(-0.5 * (xs[:, None] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
    obs = ~missing[:, 0].numpy()
    resp = np.where(obs[:, None], joint / joint.sum(1, keepdims=True), w)  # missing: the prior
    new_w = resp.sum(0) / len(xs)
    r = resp[obs]
    new_mu = (r * xs[obs, None]).sum(0) / r.sum(0)
    new_var = (r * (xs[obs, None] - new_mu) ** 2).sum(0) / r.sum(0)
    em_step(circuit, x, 1.0, 0.0, missing=missing)
    np.testing.assert_allclose(circuit.root_sum.log_weight.exp()[0].detach().numpy(), new_w,
                               rtol=1e-5)
    np.testing.assert_allclose(circuit.input_layer.mean[0].detach().numpy(), new_mu, rtol=1e-4)
    np.testing.assert_allclose(circuit.input_layer.log_var.detach().exp()[0].numpy(),
                               new_var, rtol=1e-4)


def test_gaussian_variance_is_clamped():
    circuit = Circuit(single_leaf(), 1, input="gaussian", min_var=1e-3, max_var=0.05, seed=0)
    wide = torch.linspace(-3, 3, 50)[:, None]
    em_step(circuit, wide)
    variance = circuit.input_layer.log_var.detach().exp()
    assert float(variance[0, 0]) == pytest.approx(0.05, rel=1e-5)
    em_step(circuit, torch.full((10, 1), 0.25))
    variance = circuit.input_layer.log_var.detach().exp()
    assert float(variance[0, 0]) == pytest.approx(1e-3, rel=1e-5)
    assert float(circuit.input_layer.mean.detach()[0, 0]) == pytest.approx(0.25, rel=1e-6)


def test_pseudocount_gives_unseen_categories_their_share():
    c, n, alpha = 5, 20, 0.5
    circuit = Circuit(single_leaf(), 1, input="categorical", num_categories=c, seed=0)
    x = torch.tensor([0] * 8 + [1] * 7 + [2] * 5 + [3] * 0)[:, None]  # 3 and 4 never seen
    assert len(x) == n
    em_step(circuit, x, 1.0, alpha)
    probs = circuit.input_layer.log_prob.exp()[0, :, 0].detach().double().numpy()
    expected = (np.array([8, 7, 5, 0, 0]) + alpha) / (n + c * alpha)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert probs[4] == pytest.approx(alpha / (n + c * alpha), rel=1e-6)
    # without a pseudocount the unseen categories get probability exactly zero
    em_step(circuit, x, 1.0, 0.0)
    assert float(circuit.input_layer.log_prob.detach().exp()[0, 4, 0]) == 0.0


def test_pseudocount_on_sum_weights_and_structural_zeros():
    circuit = make_circuit("padded4", "einsum", "categorical", 2, seed=10)
    padding = [~m.valid for m in circuit.mixers]
    x = training_data(circuit, 50, seed=8)
    expected, _ = reference_counts(circuit, x)
    em_step(circuit, x, 1.0, 0.3)
    circuit.check_parameters()
    for mixer, pad in zip(circuit.mixers, padding, strict=True):
        assert torch.isneginf(mixer.log_weight[pad]).all()  # structural zeros stay zero
    root = expected["root"].detach()[0]
    torch.testing.assert_close(circuit.root_sum.log_weight.exp()[0].double(),
                               (root + 0.3) / (root.sum() + 0.3 * len(root)), rtol=1e-5,
                               atol=1e-6)
    # a mixing region with 2 valid of 3 slots: (count + a) / (total + 2a)
    counts, valid = expected["mixers"][0].detach(), circuit.mixers[0].valid
    smoothed = (counts + 0.3) * valid
    torch.testing.assert_close(circuit.mixers[0].log_weight.exp().double(),
                               smoothed / smoothed.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Adam


@pytest.mark.parametrize(("name", "product", "kind"),
                         [("padded4", "einsum", "categorical"),
                          ("kary4", "hadamard", "bernoulli"),
                          ("pd2x2", "einsum", "gaussian")])
def test_fit_adam_increases_likelihood_and_keeps_parameters_normalised(name, product, kind):
    kwargs = {"max_var": 0.1} if kind == "gaussian" else {}
    circuit = Circuit(graph_of(name), 2, input=kind, product=product, seed=1,
                      num_categories=3 if kind == "categorical" else None, **kwargs)
    x = training_data(circuit, 200, seed=9)
    start = mean_ll(circuit, x)
    history = fit_adam(circuit, x, epochs=6, batch_size=50, learning_rate=0.05,
                       progress=False)
    assert len(history) == 6 and all(math.isfinite(h) for h in history)
    assert mean_ll(circuit, x) > start + 0.01
    circuit.check_parameters()
    for mixer in circuit.mixers:
        assert torch.isneginf(mixer.log_weight[~mixer.valid]).all()
    assert all(p.grad is None for p in circuit.parameters())
    # the stored weights are normalised: the joint still sums to one (discrete inputs)
    if kind != "gaussian":
        c = num_categories(kind)
        grid = torch.tensor(list(itertools.product(range(c), repeat=circuit.num_variables)))
        assert float(torch.logsumexp(circuit.log_likelihood(grid).double(), 0)) == \
            pytest.approx(0.0, abs=1e-4)
    # and EM can continue from there
    em_step(circuit, x)
    circuit.check_parameters()


def test_padded_graph_is_used():
    assert any(not bool(m.valid.all()) for m in Circuit(padded_graph(), 2, "bernoulli").mixers)


# ----------------------------------------------------------------------------- stop requests


def test_a_sigterm_during_circuit_em_without_checkpoints_stops_after_that_batch(monkeypatch):
    """Circuit EM with nothing to checkpoint into (image LVD's stage b) honours a SIGTERM after
    the batch under way: no further E-step, the parameters of the two M-steps done (the first
    two batches of epoch 0 by hand, em_step), and StoppedBeforeCheckpoint saying what ran and
    that nothing was saved."""
    from hmmlvd.data.batches import epoch_batches
    from hmmlvd.em.stop import StoppedBeforeCheckpoint, signals_request_stop

    pc_em = importlib.import_module("hmmlvd.pc.em")
    circuit = make_circuit("padded4", "einsum", "categorical", 3, seed=4)
    x = training_data(circuit, 130, seed=3)
    by_hand = copy.deepcopy(circuit)
    for rows in epoch_batches(len(x), 40, 7, 0, shuffle=True)[:2]:
        em_step(by_hand, x[torch.from_numpy(rows)], 0.5, 0.01)
    calls = signal_during_call(monkeypatch, pc_em, "accumulate_counts", 2)
    with signals_request_stop(), pytest.raises(StoppedBeforeCheckpoint) as info:
        fit_em(circuit, x, epochs=3, batch_size=40, step_size=0.5, pseudocount=0.01, seed=7,
               progress=False, desc="LVD stage b")
    assert calls[0] == 2
    assert info.value.signal == signal.SIGTERM
    assert str(info.value) == ("stopped by SIGTERM while running LVD stage b, before the first "
                               "checkpoint: nothing was saved. Run the same command again (with "
                               "or without --resume) to start over")
    for a, b in zip(by_hand.parameters(), circuit.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
