"""Bits per dimension: hand-computed values (uniform over 256 levels is exactly 8 bpd; a
factorised categorical circuit with chosen probabilities) and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.pc import Circuit, bits_per_dimension, evaluate_bpd, hclt_region_graph


def test_uniform_over_256_levels_is_8_bits():
    d = 784
    log_likelihood = torch.full((5,), -d * math.log(256), dtype=torch.float64)
    assert bits_per_dimension(log_likelihood, d) == pytest.approx(8.0, abs=1e-12)
    data = torch.randint(0, 256, (7, d))

    def uniform(x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x),), -d * math.log(256), dtype=torch.float64)

    assert evaluate_bpd(uniform, data, batch_size=3) == pytest.approx(8.0, abs=1e-12)


def factorised_circuit() -> Circuit:
    """Two variables with 4 values, K = 1 (a product of two categoricals):
    p(x0) = (1/2, 1/4, 1/8, 1/8), p(x1) uniform."""
    circuit = Circuit(hclt_region_graph([(0, 1)]), 1, input="categorical", num_categories=4,
                      product="hadamard")
    probs = {0: [0.5, 0.25, 0.125, 0.125], 1: [0.25] * 4}
    layer = circuit.input_layer
    with torch.no_grad():
        for entry, var in enumerate(layer.entry_var.tolist()):
            layer.log_prob[entry, :, 0] = torch.log(torch.tensor(probs[var]))
    circuit.check_parameters()
    return circuit


def test_factorised_categorical_matches_a_hand_count():
    circuit = factorised_circuit()
    # x = (0, 0): 1 + 2 = 3 bits; (2, 3): 3 + 2 = 5 bits; (1, 1): 2 + 2 = 4 bits.
    x = torch.tensor([[0, 0], [2, 3], [1, 1]])
    expected = (3 + 5 + 4) / 3 / 2
    assert bits_per_dimension(circuit.log_likelihood(x), 2) == pytest.approx(expected)
    for batch_size in (1, 2, 512):
        assert evaluate_bpd(circuit.log_likelihood, x, batch_size) == pytest.approx(expected)
    assert evaluate_bpd(circuit.log_likelihood, x.numpy()) == pytest.approx(expected)


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="non-empty"):
        bits_per_dimension(torch.zeros(0), 4)
    with pytest.raises(DataError, match="dimensions"):
        bits_per_dimension(torch.zeros(2), 0)
    with pytest.raises(DataError, match="sample 1 has log-likelihood -inf"):
        bits_per_dimension(torch.tensor([-1.0, -math.inf]), 4)
    with pytest.raises(DataError, match=r"non-empty \[N, D\]"):
        evaluate_bpd(lambda x: torch.zeros(len(x)), torch.zeros(0, 3, dtype=torch.long))

    def one_nan(x: torch.Tensor) -> torch.Tensor:  # sample 3 overall is NaN
        return torch.where(x[:, 0] == 3, torch.tensor(math.nan), torch.tensor(-1.0))

    data = torch.arange(6)[:, None].repeat(1, 2)
    with pytest.raises(DataError, match="sample 3 has log-likelihood nan"):
        evaluate_bpd(one_nan, data, batch_size=2)
    with pytest.raises(DataError, match="returned shape"):
        evaluate_bpd(lambda x: torch.zeros(len(x), 1), data)
