"""Tests of hmmlvd.pc.queries: sampling and inpainting against exact (brute-force)
distributions with chi-square tests at a fixed seed, greedy completion, root outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_pc_circuit import all_assignments, case_id, make_circuit, num_categories, peak_

from hmmlvd.core.errors import DataError
from hmmlvd.pc import Circuit, inpaint, log_marginal, sample
from hmmlvd.pc.structures import chain_region_graph, poon_domingos

P_MIN = 1e-4  # generous: a correct sampler fails this about once in 10,000 seeds


def chi_square_pvalue(observed: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; cells expected < 5 times are pooled into one.
    Uses scipy when present, else the Wilson-Hilferty normal approximation."""
    observed = np.asarray(observed, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = observed.sum()
    expected = n * probs
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert obs[~keep].sum() == 0, "samples landed on zero-probability outcomes"
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    if df < 1:
        return 1.0
    try:
        from scipy.stats import chi2
    except ImportError:  # pragma: no cover - scipy comes with hmmlearn
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        return 0.5 * math.erfc(z / math.sqrt(2))
    return float(chi2.sf(stat, df))


def frequencies(samples: torch.Tensor, categories: int) -> np.ndarray:
    """Counts of every assignment, indexed like ``all_assignments`` (row-major codes)."""
    d = samples.shape[1]
    codes = (samples.long() * categories ** torch.arange(d - 1, -1, -1)).sum(1)
    return np.bincount(codes.numpy(), minlength=categories**d)


SAMPLING_CASES = [
    ("pd2x2", "einsum", "bernoulli", 2),
    ("pd2x3", "hadamard", "bernoulli", 2),
    ("rat5-2-2", "einsum", "categorical", 3),
    ("padded4", "einsum", "categorical", 2),
    ("hclt5", "hadamard", "bernoulli", 3),
    ("kary4", "hadamard", "categorical", 3),
    ("chain4", "hadamard", "categorical", 2),
]


def exact_joint(circuit: Circuit, categories: int, output: int | None = None) -> np.ndarray:
    x = all_assignments(circuit.num_variables, categories)
    ll = circuit.log_likelihood(x)
    if output is not None:
        ll = ll[:, output]
    return ll.double().exp().numpy()


def test_chi_square_helper_rejects_a_wrong_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.2])
    draws = np.bincount(rng.choice(3, size=5000, p=probs), minlength=3)
    assert chi_square_pvalue(draws, probs) > P_MIN
    assert chi_square_pvalue(draws, np.array([0.45, 0.35, 0.2])) < P_MIN


@pytest.mark.parametrize("case", SAMPLING_CASES, ids=case_id)
def test_sample_frequencies_match_probabilities(case):
    name, product, kind, k = case
    circuit = make_circuit(name, product, kind, k, seed=11)
    c = num_categories(kind)
    probs = exact_joint(circuit, c)
    samples = sample(circuit, 20_000, seed=5)
    assert samples.shape == (20_000, circuit.num_variables) and samples.dtype == torch.long
    assert int(samples.min()) >= 0 and int(samples.max()) < c
    assert chi_square_pvalue(frequencies(samples, c), probs) > P_MIN
    # same seed, same samples; another seed, other samples
    again = sample(circuit, 50, seed=7)
    torch.testing.assert_close(sample(circuit, 50, seed=7), again)
    assert not torch.equal(sample(circuit, 50, seed=8), again)


@pytest.mark.parametrize("case", SAMPLING_CASES, ids=case_id)
def test_inpaint_follows_exact_conditional(case):
    name, product, kind, k = case
    circuit = make_circuit(name, product, kind, k, seed=12)
    c = num_categories(kind)
    d = circuit.num_variables
    joint = exact_joint(circuit, c).reshape([c] * d)
    gen = torch.Generator().manual_seed(1)
    # two different evidence patterns interleaved in one batch
    rows = torch.randint(0, c, (2, d), generator=gen)
    masks = torch.zeros(2, d, dtype=torch.bool)
    masks[0, : d // 2 + 1] = True
    masks[1, d // 2:] = True
    masks[1, 0] = True
    n = 8000
    x = rows.repeat(n, 1)
    missing = masks.repeat(n, 1)
    filled = inpaint(circuit, x, missing, seed=3)
    assert torch.equal(filled[~missing], x[~missing])  # evidence untouched
    for pattern in range(2):
        part, mask = filled[pattern::2], masks[pattern]
        index = tuple(int(v) if not m else slice(None)
                      for v, m in zip(rows[pattern], mask, strict=True))
        conditional = joint[index].ravel()  # over the missing variables, row-major
        assert chi_square_pvalue(frequencies(part[:, mask], c), conditional) > P_MIN


def test_inpaint_greedy_is_deterministic_and_exact_without_latent_choices():
    circuit = make_circuit("pd2x3", "einsum", "categorical", 3, seed=13)
    x = torch.randint(0, 3, (40, 6), generator=torch.Generator().manual_seed(0))
    missing = torch.rand(40, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    first = inpaint(circuit, x, missing, seed=0, greedy=True)
    assert torch.equal(first, inpaint(circuit, x, missing, seed=123, greedy=True))
    assert torch.equal(first[~missing], x[~missing])
    # a chain with K = 1 is a product of its leaves: greedy is each variable's mode
    chain = make_circuit("chain4", "hadamard", "categorical", 1, seed=14)
    modes = chain.input_layer.log_prob.detach()[:, :, 0].argmax(1)  # leaf t is variable t
    blank = torch.zeros(3, 4, dtype=torch.long)
    everything = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(inpaint(chain, blank, everything, greedy=True),
                               modes.expand(3, 4))
    # and in a K = 1 chain with evidence, the missing variables still take their modes
    x = torch.tensor([[2, 0, 1, 0], [1, 1, 1, 1]])
    some = torch.tensor([[False, True, False, True], [True, False, False, True]])
    expected = torch.where(some, modes.expand(2, 4), x)
    torch.testing.assert_close(inpaint(chain, x, some, greedy=True), expected)


def test_sample_root_output_follows_its_distribution():
    circuit = make_circuit("pd2x2", "einsum", "bernoulli", 2, seed=15, root_size=2)
    with torch.no_grad():
        circuit.root_sum.log_weight.copy_(torch.tensor([[0.97, 0.03], [0.03, 0.97]]).log())
    probs = [exact_joint(circuit, 2, output=o) for o in (0, 1)]
    assert np.abs(probs[0] - probs[1]).sum() > 0.1  # the two outputs differ
    for o in (0, 1):
        samples = sample(circuit, 20_000, seed=2, root_output=o)
        counts = frequencies(samples, 2)
        assert chi_square_pvalue(counts, probs[o]) > P_MIN
        assert chi_square_pvalue(counts, probs[1 - o]) < P_MIN  # the test has power
    with pytest.raises(DataError):
        sample(circuit, 3, root_output=2)
    with pytest.raises(DataError):
        log_marginal(circuit, torch.zeros(1, 4, dtype=torch.long),
                     torch.zeros(1, 4, dtype=torch.bool))


def test_gaussian_sampling_moments():
    graph = chain_region_graph(1)
    circuit = Circuit(graph, 2, input="gaussian", max_var=0.05, seed=0)
    with torch.no_grad():
        circuit.input_layer.mean.copy_(torch.tensor([[0.2, 0.9]]))
        circuit.input_layer.log_var.copy_(torch.tensor([[0.01, 0.04]]).log())
        circuit.root_sum.log_weight.copy_(torch.tensor([[0.3, 0.7]]).log())
    draws = sample(circuit, 40_000, seed=1)[:, 0].double()
    mean = 0.3 * 0.2 + 0.7 * 0.9
    var = 0.3 * (0.01 + 0.2**2) + 0.7 * (0.04 + 0.9**2) - mean**2
    assert float(draws.mean()) == pytest.approx(mean, abs=4 * math.sqrt(var / 40_000))
    assert float(draws.var()) == pytest.approx(var, rel=0.03)
    # greedy draws the means of the chosen components; inpainting keeps observed values
    greedy = inpaint(circuit, torch.zeros(5, 1), torch.ones(5, 1, dtype=torch.bool),
                     greedy=True)
    torch.testing.assert_close(greedy, torch.full((5, 1), 0.9))


def test_gaussian_inpaint_keeps_evidence_and_matches_conditional_mean():
    circuit = peak_(Circuit(poon_domingos(1, 2, 1), 2, input="gaussian", product="einsum",
                            min_var=1e-3, max_var=0.02, seed=3), seed=4)
    x = torch.tensor([[0.25, math.nan], [math.nan, 0.75]])
    missing = torch.isnan(x)
    filled = inpaint(circuit, x.repeat(4000, 1), missing.repeat(4000, 1), seed=2)
    observed = ~missing.repeat(4000, 1)
    assert torch.equal(filled[observed], x.repeat(4000, 1)[observed])
    assert torch.isfinite(filled).all()
    grid = torch.linspace(-1.0, 2.0, 1201)
    for row in range(2):
        query = 1 - row
        points = x[row].repeat(len(grid), 1)
        points[:, query] = grid
        density = circuit.log_likelihood(points).double().exp()
        expected = float(torch.trapezoid(density * grid, grid) / torch.trapezoid(density, grid))
        drawn = filled[row::2, query].double()
        assert float(drawn.mean()) == pytest.approx(expected, abs=5 * float(drawn.std()) / 63)


def test_inpaint_refuses_impossible_evidence():
    circuit = make_circuit("chain4", "hadamard", "categorical", 2, seed=16)
    with torch.no_grad():
        circuit.input_layer.log_prob[0, 2] = -math.inf  # value 2 impossible for variable 0
        circuit.input_layer.log_prob[0, :2] = math.log(0.5)
    x = torch.tensor([[2, 0, 0, 0]])
    with pytest.raises(DataError, match="probability zero"):
        inpaint(circuit, x, torch.tensor([[False, True, True, True]]))
    # ... but sampling never produces it
    assert int((sample(circuit, 2000, seed=0)[:, 0] == 2).sum()) == 0
