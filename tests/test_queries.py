"""Exact HMM queries (hmmlvd.hmm.queries, hmmlvd.hmm.dfa) against brute force: every window of
a tiny model enumerated with every hidden path, in float64, sharing no code with the library.
Samplers are checked by a chi-square test against the enumerated conditional."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import dense_parameters, peaked_hmm

from hmmlvd.core.errors import HMMLVDError
from hmmlvd.hmm import HMM
from hmmlvd.hmm.dfa import DFA, banned, keywords

H, V, T = 3, 4, 4


class Joint:
    """p(x, z) for every window x in V^T and path z in H^T: ``table`` [V^T, H^T] float64."""

    def __init__(self, hmm: HMM):
        initial, steps, positions = dense_parameters(hmm)
        length = hmm.length
        self.windows = np.array(list(itertools.product(range(hmm.vocab_size), repeat=length)))
        self.paths = np.array(list(itertools.product(range(hmm.num_states), repeat=length)))
        table = np.ones((len(self.windows), len(self.paths)))
        table *= initial[self.paths[:, 0]][None, :]
        for t in range(length):
            table *= positions[t][self.windows[:, t][:, None], self.paths[:, t][None, :]]
            if t:
                table *= steps[t - 1][self.paths[:, t - 1], self.paths[:, t]][None, :]
        self.table = table

    def consistent(self, x, mask) -> np.ndarray:
        """[V^T] bool: windows that agree with x where mask is True."""
        keep = np.ones(len(self.windows), dtype=bool)
        for t, (w, m) in enumerate(zip(x, mask, strict=True)):
            if m:
                keep &= self.windows[:, t] == w
        return keep


def hmm_cases():
    return [peaked_hmm(H, V, T, False, seed=5), peaked_hmm(H, V, T, True, seed=6)]


@pytest.fixture(params=[False, True], ids=["nonhomogeneous", "homogeneous"])
def case(request):
    hmm = peaked_hmm(H, V, T, request.param, seed=5 + request.param)
    return hmm, Joint(hmm)


def random_masks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=gen)
    mask = torch.rand(n, T, generator=gen) > 0.45
    mask[0] = True  # fully observed
    mask[1] = False  # nothing observed
    return x, mask


# ----- posteriors, likelihood, decoding ------------------------------------------------------
def test_masked_log_likelihood_matches_enumeration(case):
    hmm, joint = case
    x, mask = random_masks(12, 1)
    got = hmm.log_likelihood(x, mask)
    for b in range(len(x)):
        want = joint.table[joint.consistent(x[b].tolist(), mask[b].tolist())].sum()
        assert got[b].item() == pytest.approx(math.log(want), abs=1e-5)
    # words at missing positions are ignored, whatever they are
    other = torch.where(mask, x, (x + 1) % V)
    torch.testing.assert_close(hmm.log_likelihood(other, mask), got)


def test_posteriors_match_enumeration(case):
    hmm, joint = case
    x, mask = random_masks(10, 2)
    got = hmm.predict_proba(x, mask).double()
    assert got.shape == (10, T, H)
    for b in range(len(x)):
        p = joint.table[joint.consistent(x[b].tolist(), mask[b].tolist())].sum(0)  # per path
        for t in range(T):
            want = np.array([p[joint.paths[:, t] == h].sum() for h in range(H)]) / p.sum()
            np.testing.assert_allclose(got[b, t].numpy(), want, atol=1e-5)


def test_viterbi_matches_enumeration(case):
    hmm, joint = case
    x, mask = random_masks(12, 3)
    paths, scores = hmm.decode(x, mask)
    for b in range(len(x)):
        per_path = joint.table[joint.consistent(x[b].tolist(), mask[b].tolist())].sum(0)
        best = int(per_path.argmax())
        assert scores[b].item() == pytest.approx(math.log(per_path[best]), abs=1e-5)
        got_path = paths[b].numpy()
        got_index = int(np.flatnonzero((joint.paths == got_path).all(1))[0])
        # the path returned reaches the maximum (ties may pick another maximiser)
        assert per_path[got_index] == pytest.approx(per_path[best], rel=1e-5)


def test_viterbi_runs_in_chunks_like_one_pass(monkeypatch):
    import hmmlvd.hmm.queries as q

    hmm = peaked_hmm(H, V, T, seed=9)
    x, mask = random_masks(9, 4)
    whole = hmm.decode(x, mask)
    monkeypatch.setattr(q, "VITERBI_ENTRIES", 2 * H * H)  # chunks of 2 windows
    chunked = hmm.decode(x, mask)
    assert torch.equal(whole[0], chunked[0])
    torch.testing.assert_close(whole[1], chunked[1])


# ----- infill ---------------------------------------------------------------------------------
def test_infill_distribution_matches_enumeration(case):
    hmm, joint = case
    x, mask = random_masks(10, 5)
    got = hmm.infill_distribution(x, mask).double()
    assert got.shape == (10, T, V)
    for b in range(len(x)):
        keep = joint.consistent(x[b].tolist(), mask[b].tolist())
        p = joint.table[keep].sum(1)
        words = joint.windows[keep]
        for t in range(T):
            want = np.array([p[words[:, t] == w].sum() for w in range(V)]) / p.sum()
            np.testing.assert_allclose(got[b, t].numpy(), want, atol=1e-5)
    values, ids = hmm.infill_distribution(x, mask, top_k=2)
    assert values.shape == ids.shape == (10, T, 2)
    torch.testing.assert_close(values.double(), got.gather(2, ids), rtol=1e-6, atol=1e-7)
    assert (values[..., 0] >= values[..., 1]).all()
    assert torch.equal(values[..., 0].double(), got.max(-1).values.double())


def chi_square_critical(df: int, z: float = 3.29) -> float:
    """Wilson–Hilferty upper quantile of chi-square(df) at about 1 - 5e-4 (z = 3.29)."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def chi_square(counts: dict, probs: dict, n: int) -> tuple[float, int]:
    """Pearson statistic over outcomes with expected >= 5 (the rest pooled) and its df."""
    stat, pooled_obs, pooled_exp, bins = 0.0, 0, 0.0, 0
    for key, p in probs.items():
        expected = n * p
        if expected >= 5:
            stat += (counts.get(key, 0) - expected) ** 2 / expected
            bins += 1
        else:
            pooled_obs += counts.get(key, 0)
            pooled_exp += expected
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        bins += 1
    assert sum(c for k, c in counts.items() if k not in probs) == 0, "impossible outcome drawn"
    return stat, bins - 1


def test_infill_samples_follow_the_enumerated_conditional():
    hmm = peaked_hmm(H, V, T, seed=11, sharpness=1.0)
    joint = Joint(hmm)
    x = torch.tensor([[2, 0, 1, 3], [1, 1, 0, 2]])
    mask = torch.tensor([[True, False, True, False], [False, True, False, True]])
    n = 4000
    samples = hmm.infill(x, mask, n, seed=0)
    assert samples.shape == (2, n, T)
    for b in range(2):
        assert torch.equal(samples[b][:, mask[b]], x[b][mask[b]].expand(n, -1))
        keep = joint.consistent(x[b].tolist(), mask[b].tolist())
        p = joint.table[keep].sum(1)
        probs = {tuple(w): pi / p.sum() for w, pi in zip(joint.windows[keep], p, strict=True)}
        counts: dict = {}
        for row in samples[b].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        stat, df = chi_square(counts, probs, n)
        assert stat < chi_square_critical(df), (stat, df)


def test_infill_samples_are_joint_not_independent():
    """Two adjacent missing words of a model with strong state persistence co-vary: drawing
    each from its own marginal would break the pair frequencies the chi-square test checks."""
    hmm = peaked_hmm(2, 2, 3, seed=12, sharpness=4.0)
    joint = Joint(hmm)
    x = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[True, False, False]])
    samples = hmm.infill(x, mask, 4000, seed=1)[0]
    keep = joint.consistent([0, 0, 1], [True, False, False])
    p = joint.table[keep].sum(1)
    probs = {tuple(w): pi / p.sum() for w, pi in zip(joint.windows[keep], p, strict=True)}
    counts: dict = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    stat, df = chi_square(counts, probs, 4000)
    assert stat < chi_square_critical(df)


# ----- constraints ----------------------------------------------------------------------------
def accepted(joint: Joint, dfa: DFA) -> np.ndarray:
    return np.array([dfa.accepts(w) for w in joint.windows])


def test_dfa_builders_accept_what_they_say():
    seqs = list(itertools.product(range(5), repeat=4))
    for seq in seqs:
        assert keywords([1, 3]).accepts(seq) == (1 in seq and 3 in seq)
        assert banned([0, 2]).accepts(seq) == (0 not in seq and 2 not in seq)
        ordered = keywords([3, 1], ordered=True).accepts(seq)
        want = any(seq[i] == 3 and 1 in seq[i + 1:] for i in range(len(seq)))
        assert ordered == want, seq
        twice = keywords([2, 2], ordered=True).accepts(seq)
        assert twice == (seq.count(2) >= 2)
        both = keywords([1]).intersect(banned([4])).accepts(seq)
        assert both == (1 in seq and 4 not in seq)
    assert keywords([1, 3]).num_states == 4 and keywords([1, 3], ordered=True).num_states == 3


def test_dfa_refuses_what_is_not_an_automaton():
    with pytest.raises(HMMLVDError, match="deterministic"):
        DFA(2, 0, frozenset({1}), ((0, 1, 1), (0, 1, 0)), (0, 1))
    with pytest.raises(HMMLVDError, match="outside"):
        DFA(2, 0, frozenset({2}), (), (0, 1))
    with pytest.raises(HMMLVDError, match="at least one keyword"):
        keywords([])


CONSTRAINTS = {"keywords": keywords([1, 2]), "ordered": keywords([2, 1], ordered=True),
               "banned": banned([3]), "both": keywords([0]).intersect(banned([2]))}


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_constraint_probability_matches_enumeration(case, name):
    hmm, joint = case
    dfa = CONSTRAINTS[name]
    p = joint.table.sum(1)
    ok = accepted(joint, dfa)
    assert hmm.constraint_probability(dfa).item() == pytest.approx(p[ok].sum(), rel=1e-5)
    prefixes = torch.tensor([[1, 3], [2, 2], [0, 1]])
    got = hmm.constraint_probability(dfa, prefixes)
    for b, prefix in enumerate(prefixes.tolist()):
        given = (joint.windows[:, :2] == prefix).all(1)
        want = p[given & ok].sum() / p[given].sum()
        assert got[b].item() == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_constrained_next_token_matches_enumeration(case, name):
    hmm, joint = case
    dfa = CONSTRAINTS[name]
    p = joint.table.sum(1)
    ok = accepted(joint, dfa)
    for prefix in ([], [1], [3, 0], [0, 2, 1]):
        given = (joint.windows[:, :len(prefix)] == prefix).all(1) & ok
        as_tensor = torch.tensor([prefix], dtype=torch.long)
        if p[given].sum() == 0:  # e.g. a banned word in the prefix
            with pytest.raises(HMMLVDError, match="probability 0"):
                hmm.constrained_next_token(as_tensor, dfa)
            continue
        got = hmm.constrained_next_token(as_tensor, dfa)[0]
        nxt = joint.windows[:, len(prefix)]
        want = np.array([p[given & (nxt == w)].sum() for w in range(V)]) / p[given].sum()
        np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5)
    empty = hmm.constrained_next_token(None, dfa)
    torch.testing.assert_close(empty, hmm.constrained_next_token(
        torch.zeros(1, 0, dtype=torch.long), dfa))


@pytest.mark.parametrize("name", ["keywords", "ordered", "banned"])
def test_constrained_samples_follow_the_enumerated_conditional(name):
    hmm = peaked_hmm(H, V, T, seed=13, sharpness=1.0)
    joint = Joint(hmm)
    dfa = CONSTRAINTS[name]
    p = joint.table.sum(1)
    ok = accepted(joint, dfa)
    for prefix in (None, torch.tensor([1])):
        keep = ok.copy()
        if prefix is not None:
            keep &= joint.windows[:, 0] == 1
        n = 5000
        samples = hmm.sample(n, constraint=dfa, prefix=prefix, seed=2)
        assert all(dfa.accepts(row) for row in samples.tolist())  # exactness: 100%
        probs = {tuple(w): pi / p[keep].sum()
                 for w, pi in zip(joint.windows[keep], p[keep], strict=True)}
        counts: dict = {}
        for row in samples.tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        stat, df = chi_square(counts, probs, n)
        assert stat < chi_square_critical(df), (name, prefix, stat, df)


def test_an_impossible_constraint_says_so():
    hmm = peaked_hmm(H, V, T, seed=14)
    emission = hmm.emission.clone()
    emission[:, 3] = 0.0  # word 3 is never emitted
    emission /= emission.sum(1, keepdim=True)
    hmm = HMM(H, V, T, initial=hmm.initial, transition=hmm.transition, emission=emission)
    dfa = keywords([3])
    assert hmm.constraint_probability(dfa).item() == 0.0
    with pytest.raises(HMMLVDError, match="probability 0"):
        hmm.sample(3, constraint=dfa, seed=0)
    with pytest.raises(HMMLVDError, match="probability 0"):
        hmm.constrained_next_token(torch.tensor([[0]]), dfa)
    with pytest.raises(HMMLVDError, match="outside the model's vocabulary"):
        hmm.constraint_probability(keywords([V]))
