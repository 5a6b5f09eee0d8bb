"""Exact HMM queries (hmmlvd.hmm.queries, hmmlvd.hmm.dfa) against brute force: every window of
a tiny model enumerated with every hidden path, in float64, sharing no code with the library.
Samplers are checked by a chi-square test against the enumerated conditional."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import (
    assert_same_with_the_default_device_elsewhere,
    dense_parameters,
    peaked_hmm,
)

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
    assert paths.dtype == torch.int64  # state ids, usable as indices
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


def test_a_single_window_and_mask_may_be_one_dimensional(case):
    """A window [L] (and its mask [L]) is one row [1, L]; with no mask every word is observed."""
    hmm, joint = case
    x, mask = random_masks(3, 6)
    for b in range(len(x)):
        keep = joint.consistent(x[b].tolist(), mask[b].tolist())
        got = hmm.log_likelihood(x[b], mask[b])
        assert got.shape == (1,)
        assert got.item() == pytest.approx(math.log(joint.table[keep].sum()), abs=1e-5)
        post = hmm.predict_proba(x[b]).double()  # fully observed
        assert post.shape == (1, T, H)
        p = joint.table[joint.consistent(x[b].tolist(), [True] * T)].sum(0)
        for t in range(T):
            want = np.array([p[joint.paths[:, t] == h].sum() for h in range(H)]) / p.sum()
            np.testing.assert_allclose(post[0, t].numpy(), want, atol=1e-5)


def test_a_one_word_vocabulary_marginalises_missing_words():
    """With V = 1 every window has probability 1, masked or not; a missing position may hold
    any id (it is never looked up)."""
    hmm = HMM(2, 1, 3, initial=torch.tensor([0.3, 0.7]),
              transition=torch.tensor([[[0.9, 0.1], [0.2, 0.8]]] * 2), emission=torch.ones(3, 1, 2))
    x = torch.tensor([[0, -1, 0], [7, 0, 0]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    torch.testing.assert_close(hmm.log_likelihood(x, mask), torch.zeros(2))


def test_window_and_mask_errors_name_the_problem():
    hmm = peaked_hmm(H, V, T, seed=15)
    x, mask = random_masks(2, 7)
    with pytest.raises(HMMLVDError, match="token windows must be integer ids"):
        hmm.predict_proba(x.float(), mask)
    with pytest.raises(HMMLVDError, match=r"mask has shape \(2, 3\) but the windows have "
                                          r"\(2, 4\)"):
        hmm.log_likelihood(x, mask[:, :3])
    with pytest.raises(HMMLVDError, match="mask must be boolean"):
        hmm.log_likelihood(x, mask.long())
    with pytest.raises(HMMLVDError, match="infill needs a mask marking the missing words"):
        hmm.infill_distribution(x, None)
    with pytest.raises(HMMLVDError, match="top_k must be >= 1"):
        hmm.infill_distribution(x, mask, top_k=0)


def test_windows_of_probability_zero_are_named():
    """Posteriors of impossible windows refuse (instead of returning NaN), naming the first five
    rows."""
    hmm = peaked_hmm(H, V, T, seed=14)
    emission = hmm.emission.clone()
    emission[:, 3] = 0.0  # word 3 is never emitted
    emission /= emission.sum(1, keepdim=True)
    hmm = HMM(H, V, T, initial=hmm.initial, transition=hmm.transition, emission=emission)
    x = torch.tensor([[3, 0, 1, 2]] * 7 + [[0, 1, 2, 0]])
    with pytest.raises(HMMLVDError, match=r"^windows \[0, 1, 2, 3, 4\] have probability 0 "
                                          r"under the model: there is no posterior to "
                                          r"condition on$"):
        hmm.predict_proba(x)


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
    best, best_ids = hmm.infill_distribution(x, mask, top_k=1)  # the smallest k allowed
    torch.testing.assert_close(best[..., 0].double(), got.max(-1).values)
    torch.testing.assert_close(got.gather(2, best_ids), got.max(-1, keepdim=True).values)


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


# "parity": an even number of word 1, with a redundant explicit edge (q, 0, q) that agrees
# with the default edge, so both kinds of edge add mass to the same E_t[q, q, .] entry.
PARITY = DFA(2, 0, frozenset({0}), ((0, 1, 1), (1, 1, 0), (0, 0, 0)), (0, 1))
# "either": word 1 or word 3 somewhere; two explicit edges share (q, q') = (0, 1).
EITHER = DFA(2, 0, frozenset({1}), ((0, 1, 1), (0, 3, 1)), (0, 1))
CONSTRAINTS = {"keywords": keywords([1, 2]), "ordered": keywords([2, 1], ordered=True),
               "banned": banned([3]), "both": keywords([0]).intersect(banned([2])),
               "banned two": banned([1, 3]), "parity": PARITY, "either": EITHER}


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
        one_row = hmm.constrained_next_token(as_tensor[0], dfa)  # a prefix [L] is one row
        assert one_row.shape == (1, V)
        np.testing.assert_allclose(one_row[0].double().numpy(), want, atol=1e-5)
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
    for prefix in (None, torch.tensor([1]), torch.tensor([2, 0])):
        keep = ok.copy()
        if prefix is not None:  # one row [L], shared by every sample
            keep &= (joint.windows[:, :len(prefix)] == prefix.numpy()).all(1)
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


def test_constraint_inputs_errors_name_the_problem():
    hmm = peaked_hmm(H, V, T, seed=16)
    dfa = keywords([1])
    with pytest.raises(HMMLVDError, match="a constraint must be a DFA, got list"):
        hmm.constraint_probability([1])
    with pytest.raises(HMMLVDError, match="prefix must be integer ids"):
        hmm.constrained_next_token(torch.tensor([1.0]), dfa)
    with pytest.raises(HMMLVDError, match=r"prefix must have shape \[L\] or \[B, L\], got "
                                          r"\(1, 1, 2\)"):
        hmm.constraint_probability(dfa, torch.ones(1, 1, 2, dtype=torch.long))
    with pytest.raises(HMMLVDError, match="prefix has 2 rows but 5 samples were asked for"):
        hmm.sample(5, constraint=dfa, prefix=torch.tensor([[1], [2]]), seed=0)
    whole = torch.tensor([[1, 0, 2, 3]])  # T words: nothing left to generate
    for query in (lambda: hmm.constraint_probability(dfa, whole),
                  lambda: hmm.constrained_next_token(whole, dfa),
                  lambda: hmm.sample(1, constraint=dfa, prefix=whole, seed=0)):
        with pytest.raises(HMMLVDError, match="a prefix of 4 words leaves nothing to generate "
                                              "in a window of T=4"):
            query()


def test_constrained_next_token_over_a_long_window_matches_a_closed_form():
    """Banned words over T = 12, where p(no banned word in the rest) is small: the backward's
    per-position scaling must keep it in range. Reference: p(x_2 = w, x_1 = 0, no banned word)
    by a float64 forward whose every later emission factor is sum_{w' not banned} B_t[h, w']."""
    length, bad = 12, [2, 3]
    hmm = peaked_hmm(H, V, length, seed=21)
    initial, steps, positions = dense_parameters(hmm)
    allowed = [1.0 - positions[t][bad].sum(0) for t in range(length)]  # [H] per position
    want = np.zeros(V)
    for w in range(V):
        if w in bad:
            continue
        alpha = (initial * positions[0][0]) @ steps[0] * positions[1][w]
        for t in range(2, length):
            alpha = alpha @ steps[t - 1] * allowed[t]
        want[w] = alpha.sum()
    got = hmm.constrained_next_token(torch.tensor([[0]]), banned(bad))[0]
    np.testing.assert_allclose(got.double().numpy(), want / want.sum(), atol=1e-6)


def test_queries_build_their_tensors_on_the_model_device():
    """With torch's default device elsewhere (here "meta", which holds no values), every query
    on a CPU model still gives the CPU numbers: each tensor it builds follows the model's
    device (or the given windows'), never the default."""
    hmm = peaked_hmm(H, V, T, seed=17)
    x = torch.tensor([[0, 1, 2, 3], [2, 0, 1, 0]])
    mask = [[True, False, True, True], [False, True, True, False]]  # a list: built here
    dfa = keywords([1, 2]).intersect(banned([3]))

    def run() -> list:
        return [hmm.log_likelihood(x, mask), hmm.predict_proba(x, mask),
                *hmm.decode(x, mask), hmm.infill_distribution(x, mask),
                hmm.infill(x, mask, 3, seed=0), hmm.constraint_probability(dfa),
                hmm.constraint_probability(dfa, x[:, :2]),
                hmm.constrained_next_token(None, dfa),
                hmm.constrained_next_token(x[:, :2], dfa),
                hmm.sample(5, constraint=dfa, seed=0),
                hmm.sample(5, constraint=dfa, prefix=x[0, :1], seed=0)]

    assert_same_with_the_default_device_elsewhere(run)
