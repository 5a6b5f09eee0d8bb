"""Mini-batch EM of an HMM through the lazily scaled emission table (ScaledEmission: emission =
scale * stored + offset per (position, state)) against a dense float64 M-step written out here,
on a model whose unvisited states differ from position to position, so that every (position,
state) has its own scale and offset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hmmlvd.hmm import HMM, expected_counts, maximize
from hmmlvd.hmm.em import ScaledEmission

H, V, T = 3, 5, 4
#: (position, state) pairs no window can visit: the state emits only a token that never
#: occurs at that position in the windows of :func:`windows`.
UNVISITED = {(0, 2): 4, (2, 2): 4, (3, 1): 3}


def start_parameters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 initial [H], transition [T-1, H, H], emission [T, V, H]: random and positive,
    except that each unvisited (position, state) puts all its mass on its absent token."""
    rng = np.random.default_rng(seed)
    initial = rng.dirichlet(np.ones(H))
    transition = rng.dirichlet(np.ones(H), size=(T - 1, H))
    emission = rng.dirichlet(np.ones(V), size=(T, H)).transpose(0, 2, 1).copy()  # [T, V, H]
    for (p, h), token in UNVISITED.items():
        emission[p, :, h] = 0.0
        emission[p, token, h] = 1.0
    return initial, transition, emission


def windows(batch: int, seed: int) -> np.ndarray:
    """[batch, T] windows: token 4 never at positions 0 and 2, token 3 never at position 3."""
    rng = np.random.default_rng(seed)
    allowed = [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3], [0, 1, 2, 4]]
    return np.stack([rng.choice(allowed[p], size=batch) for p in range(T)], axis=1)


PATHS = np.array(list(itertools.product(range(H), repeat=T)))  # [H^T, T]


def brute_counts(initial, transition, emission, x):
    """Expected counts of windows ``x`` [B, T] by enumerating every hidden path (float64)."""
    n_init, n_trans, n_emit = np.zeros(H), np.zeros((T - 1, H, H)), np.zeros((T, V, H))
    for row in x:
        joint = initial[PATHS[:, 0]] * emission[0, row[0], PATHS[:, 0]]
        for t in range(1, T):
            joint = joint * transition[t - 1, PATHS[:, t - 1], PATHS[:, t]]
            joint = joint * emission[t, row[t], PATHS[:, t]]
        post = joint / joint.sum()
        np.add.at(n_init, PATHS[:, 0], post)
        for t in range(T - 1):
            np.add.at(n_trans[t], (PATHS[:, t], PATHS[:, t + 1]), post)
        for t in range(T):
            np.add.at(n_emit[t, row[t]], PATHS[:, t], post)
    return n_init, n_trans, n_emit


def mixed(theta: np.ndarray, counts: np.ndarray, axis: int, a: float, c: float) -> np.ndarray:
    """The M-step of one table: every distribution (along ``axis``) that has counts becomes
    (1 - a) theta + a (n + c) / sum(n + c); one without counts keeps its values."""
    target = (counts + c) / (counts + c).sum(axis, keepdims=True)
    seen = counts.sum(axis, keepdims=True) > 0
    return np.where(seen, (1 - a) * theta + a * target, theta)


@pytest.mark.parametrize("step_size", [0.2, 0.5])
def test_scaled_mini_batch_em_equals_dense_em_with_position_dependent_unvisited_states(
        step_size):
    """45 mini-batch M-steps (at a = 0.5 the scale of the visited states falls below
    MIN_SCALE, so the table is written out midway while unvisited states still have scale 1)
    give the parameters of the dense M-step, and the gathered emissions agree along the way.
    Guards against the lazy table being read or written out with another position's (or
    state's) scale or offset, which corrupts exactly the states some positions leave
    unvisited: the model's emissions stop summing to 1 there or drift from what EM gives."""
    initial, transition, emission = start_parameters()
    hmm = HMM(H, V, T, initial=torch.tensor(initial, dtype=torch.float32),
              transition=torch.tensor(transition, dtype=torch.float32),
              emission=torch.tensor(emission, dtype=torch.float32))
    scaled = ScaledEmission(hmm)
    assert scaled.exact  # a fresh wrapper: hmm.emission holds the probabilities
    pseudocount, written_out = 0.05, 0
    for step in range(45):
        x = windows(6, seed=100 + step)
        n_init, n_trans, n_emit = brute_counts(initial, transition, emission, x)
        totals = n_emit.sum(1)  # [T, H]
        for (p, h) in UNVISITED:  # the premise: unvisited here, visited elsewhere
            assert totals[p, h] == 0 and totals[:, h].max() > 0
        initial = mixed(initial, n_init, 0, step_size, pseudocount)
        transition = mixed(transition, n_trans, 2, step_size, pseudocount)
        emission = mixed(emission, n_emit, 1, step_size, pseudocount)
        tokens = torch.as_tensor(x)
        maximize(hmm, expected_counts(hmm, tokens, scaled), step_size, pseudocount, scaled)
        written_out += scaled.exact
        if step % 10 == 5:  # the emissions the next E-step reads, still scaled
            want = emission[np.arange(T), x, :]  # [B, T, H]
            np.testing.assert_allclose(scaled.gather(tokens).double().numpy(), want,
                                       rtol=2e-4, atol=1e-6)
            # prefix windows read the first positions' scale and offset
            np.testing.assert_allclose(scaled.gather(tokens[:, :2]).double().numpy(),
                                       want[:, :2], rtol=2e-4, atol=1e-6)
    assert (written_out > 0) == (step_size == 0.5)  # the premise of the docstring
    scaled.materialise()
    for name, want in (("initial", initial), ("transition", transition),
                       ("emission", emission)):
        np.testing.assert_allclose(getattr(hmm, name).double().numpy(), want, rtol=2e-4,
                                   atol=1e-6, err_msg=name)
    hmm.validate(tolerance=1e-5)


@pytest.mark.parametrize("lowest_alpha", [0.5, 0.0])
def test_update_is_a_scale_and_shift_plus_a_sparse_add(lowest_alpha):
    """update(alpha, beta, rows, values, weight) with its default (sparse rows) writes
    e <- alpha[p] * e + beta[p] for every word, then e[rows] += values * weight[p of the row],
    written out here in float64; alpha > 0 keeps the table scaled, alpha = 0 for some state
    writes it out first. Five rows (one repeated) over four positions, in no position order."""
    hmm = HMM(2, 3, 4, seed=7)
    old = hmm.emission.double().clone()  # [P, V, H]
    gen = torch.Generator().manual_seed(0)
    alpha = lowest_alpha + (1 - lowest_alpha) * torch.rand(4, 2, generator=gen)
    alpha[1, 0] = lowest_alpha
    beta, weight = 0.1 * torch.rand(4, 2, generator=gen), torch.rand(4, 2, generator=gen)
    rows = torch.tensor([7, 2, 9, 7, 4])  # p * V + w
    values = torch.rand(5, 2, generator=gen)
    scaled = ScaledEmission(hmm)
    scaled.update(alpha, beta, rows, values, weight)
    assert scaled.exact == (lowest_alpha == 0.0)
    scaled.materialise()
    want = alpha.double()[:, None, :] * old + beta.double()[:, None, :]
    flat = want.view(-1, 2)
    for row, value in zip(rows.tolist(), values.double(), strict=True):
        flat[row] += value * weight.double()[row // 3]
    torch.testing.assert_close(hmm.emission.double(), want, rtol=1e-5, atol=1e-7)
