"""The leaf prior of categorical inputs (EMConfig.leaf_prior): the pseudocount spread over the
categories by each variable's histogram instead of uniformly. Checked against closed forms and
independent numpy histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.em.rule import mix_probabilities
from hmmlvd.pc import Circuit, EMConfig, poon_domingos
from hmmlvd.pc.layers.categorical import CategoricalInput, marginal_histograms


def test_rule_with_a_pseudocount_per_outcome_is_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    counts = torch.rand(3, 5, 2, generator=gen) * 4
    theta = torch.softmax(torch.randn(3, 5, 2, generator=gen), 1)
    prior = torch.softmax(torch.randn(3, 5, 1, generator=gen), 1)
    new = mix_probabilities(theta, counts, (1,), 0.3, 0.7 * 5 * prior)
    target = (counts + 3.5 * prior) / (counts.sum(1, keepdim=True) + 3.5)
    torch.testing.assert_close(new, 0.7 * theta + 0.3 * target)


def test_marginal_histograms_are_add_one_smoothed_counts():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (50, 3))
    missing = rng.random((50, 3)) < 0.3
    got = marginal_histograms(torch.as_tensor(x), 4, torch.as_tensor(missing), batch_size=7)
    for v in range(3):
        seen = x[~missing[:, v], v]
        expected = (np.bincount(seen, minlength=4) + 1) / (len(seen) + 4)
        np.testing.assert_allclose(got[v].numpy(), expected, rtol=1e-6)


def layer_with_counts(rows: int = 4, categories: int = 6, units: int = 3,
                      entry_var: list[int] | None = None) -> CategoricalInput:
    entry_var = torch.tensor(entry_var or list(range(rows)))
    layer = CategoricalInput(entry_var, torch.arange(len(entry_var)), len(entry_var), units,
                             categories, torch.Generator().manual_seed(2))
    return layer


def test_uniform_prior_is_the_plain_pseudocount_and_marginal_the_closed_form():
    gen = torch.Generator().manual_seed(3)
    counts = torch.rand(4, 6, 3, generator=gen) * 5
    prior = torch.softmax(torch.randn(4, 6, generator=gen), 1)
    results = []
    for variable_prior in (None, torch.full((4, 6), 1 / 6), prior):
        layer = layer_with_counts()
        layer.set_prior_(variable_prior)
        layer._counts = counts.clone().view(-1, 3)
        layer.maximize_(1.0, 0.5)
        results.append(layer.log_prob.detach().exp())
    torch.testing.assert_close(results[0], results[1])
    expected = (counts + 0.5 * 6 * prior[:, :, None]) / (counts.sum(1, keepdim=True) + 3.0)
    torch.testing.assert_close(results[2], expected)


def test_tied_rows_take_the_mean_of_their_variables_priors_and_bad_priors_are_refused():
    layer = layer_with_counts(entry_var=[0, 1, 2, 0])
    layer.tie_(torch.tensor([0, 1, 0, 1]))  # row 0: variables 0 and 2; row 1: 1 and 0
    prior = torch.softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(4)), 1)
    layer.set_prior_(prior)
    torch.testing.assert_close(layer.prior, torch.stack([(prior[0] + prior[2]) / 2,
                                                         (prior[1] + prior[0]) / 2]))
    for bad in (torch.ones(3, 6), torch.full((2, 6), 1 / 6), -torch.full((3, 6), 1 / 6)):
        with pytest.raises(ParameterError, match="prior"):
            layer.set_prior_(bad)
    with pytest.raises(DataError, match="leaf_prior must be one of"):
        EMConfig(leaf_prior="dirichlet")


def test_marginal_prior_keeps_probability_off_values_a_variable_never_takes():
    """Variable 0 is always 0 (a background pixel): with the marginal prior a large
    pseudocount barely lowers p(x0 = 0), while the uniform prior spreads it over all values;
    the circuit's prior rows are the data's histograms."""
    gen = torch.Generator().manual_seed(5)
    data = torch.randint(0, 8, (40, 4), generator=gen)
    data[:, 0] = 0
    p_zero = {}
    for prior in ("uniform", "marginal"):
        circuit = Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical",
                          num_categories=8, seed=5)
        circuit.fit(data, EMConfig(epochs=3, batch_size=40, full_batch=True, pseudocount=2.0,
                                   leaf_prior=prior, final_full_batch=0, step_size=1.0),
                    progress=False)
        layer = circuit.input_layer
        rows = (layer.entry_var == 0).nonzero().flatten()
        p_zero[prior] = float(layer.log_prob.detach()[rows, 0].exp().min())
        if prior == "marginal":
            expected = (np.bincount(data[:, 0].numpy(), minlength=8) + 1) / (40 + 8)
            np.testing.assert_allclose(layer.prior[rows[0]].numpy(), expected, rtol=1e-6)
    # a unit that saw n of the 40 zeros: (n + 2) / (n + 16) <= 42 / 56 under the uniform prior;
    # (n + 16 * 41/48) / (n + 16) >= 41/48 under the marginal one (0 is 41 of its 48 counts)
    assert p_zero["uniform"] <= 42 / 56 + 1e-6
    assert p_zero["marginal"] >= 41 / 48 - 1e-6


def test_patch_circuit_copies_read_their_pixels_histogram(tmp_path):
    from hmmlvd.image.patch_circuit import PatchCircuit
    from hmmlvd.pc.structures import learn_hclt

    rng = np.random.default_rng(6)
    images = rng.integers(0, 4, (30, 4, 4, 1))
    images[:, 0, 0, 0] = 3
    flat = torch.as_tensor(images.reshape(30, -1))
    subs = [learn_hclt(rng.integers(0, 4, (30, 4)), 4, 4) for _ in range(8)]
    top = learn_hclt(rng.integers(0, 2, (30, 4)), 2)
    model = PatchCircuit((4, 4, 1), 2, subs, top, 2, 2, 2, num_categories=4, seed=1)
    model.set_leaf_prior("marginal", flat)
    layer = model.parts.input_layer
    patch_size = 4
    for entry in range(layer.num_entries):
        virtual = int(layer.entry_var[entry])
        group, pixel = divmod(virtual, patch_size)
        position = group // 2  # two latent values per patch position
        row, col = 2 * (position // 2) + pixel // 2, 2 * (position % 2) + pixel % 2
        values = images[:, row, col, 0]
        expected = (np.bincount(values, minlength=4) + 1) / (30 + 4)
        np.testing.assert_allclose(layer.prior[layer.entry_row[entry]].numpy(), expected,
                                   rtol=1e-6)
    assert model.top.input_layer.prior is None
    model.set_leaf_prior("uniform", flat)
    assert layer.prior is None
