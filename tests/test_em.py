"""EM by autograd (hmmlvd.hmm.em): E-step counts against brute-force posteriors, M-step against
formulas written out in the tests, and the usual EM guarantees."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from conftest import assert_same_with_the_default_device_elsewhere

from hmmlvd.core.errors import DataError, HMMLVDError
from hmmlvd.hmm import HMM, CountAccumulator, expected_counts, maximize
from hmmlvd.hmm.em import ExpectedCounts, ScaledEmission


def dense_emission(hmm: HMM, counts) -> torch.Tensor:
    """Scatter the sparse emission rows of ``counts`` into a dense [P_B, V, H] table."""
    dense = torch.zeros(hmm.emission.numel() // hmm.num_states, hmm.num_states,
                        dtype=torch.float64)
    dense.index_add_(0, counts.emission_rows, counts.emission_values.double())
    return dense.view(hmm.emission.shape)


def clone_hmm(hmm: HMM) -> HMM:
    return copy.deepcopy(hmm)


def params(hmm: HMM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hmm.parameters().items()}


@pytest.mark.parametrize("homogeneous", [False, True])
def test_expected_counts_match_brute_force_posteriors(make_hmm, windows_factory, brute_counts,
                                                      homogeneous):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=41)
    x = windows_factory(12, 4, 5, seed=42)
    x[5] = x[2]  # a repeated window: emission rows repeat and must add up
    counts = expected_counts(hmm, x)
    want = brute_counts(hmm, x)
    pa, pb = (1, 1) if homogeneous else (3, 4)
    assert counts.transition.shape == (pa, 3, 3)
    assert counts.state_totals.shape == (pb, 3)
    torch.testing.assert_close(counts.initial.double(), torch.from_numpy(want["initial"]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(counts.transition.double(),
                               torch.from_numpy(want["transition"]), rtol=1e-4, atol=1e-5)
    emission = torch.from_numpy(want["emission"])
    torch.testing.assert_close(dense_emission(hmm, counts), emission, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(counts.state_totals.double(), emission.sum(1), rtol=1e-4,
                               atol=1e-5)
    assert counts.log_likelihood == pytest.approx(want["log_likelihood"], rel=1e-5)
    assert counts.num_windows == 12


@pytest.mark.parametrize("homogeneous", [False, True])
def test_accumulator_equals_counts_of_the_whole_batch(make_hmm, windows_factory, homogeneous):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=43)
    x = windows_factory(10, 4, 5, seed=44)
    acc = CountAccumulator(hmm)
    for part in (x[:3], x[3:4], x[4:]):
        acc.add(expected_counts(hmm, part))
    total = acc.total()
    whole = expected_counts(hmm, x)
    torch.testing.assert_close(total.initial, whole.initial)
    torch.testing.assert_close(total.transition, whole.transition)
    torch.testing.assert_close(dense_emission(hmm, total), dense_emission(hmm, whole))
    torch.testing.assert_close(total.state_totals, whole.state_totals)
    assert total.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-6)
    assert total.num_windows == 10


def test_expected_counts_of_single_position_windows(make_hmm):
    """T = 1: only initial and emission counts exist; initial counts are p(z_1 | x_1)."""
    hmm = make_hmm(3, 4, 1, seed=45)
    x = torch.tensor([[0], [3], [3]])
    counts = expected_counts(hmm, x)
    joint = hmm.initial.double() * hmm.emission[0].double()  # [V, H]
    post = joint / joint.sum(-1, keepdim=True)
    torch.testing.assert_close(counts.initial.double(), post[[0, 3, 3]].sum(0), atol=1e-5,
                               rtol=1e-5)


def _log_likelihood(hmm: HMM, x: torch.Tensor) -> float:
    return hmm.log_likelihood(x).double().sum().item()


@pytest.mark.parametrize("homogeneous", [False, True])
def test_full_batch_em_never_decreases_likelihood(make_hmm, windows_factory, homogeneous):
    teacher = make_hmm(4, 6, 5, homogeneous, seed=46, sharpness=2.5)
    x = teacher.sample(60, generator=torch.Generator().manual_seed(0))
    hmm = make_hmm(4, 6, 5, homogeneous, seed=47, sharpness=None)
    history = [_log_likelihood(hmm, x)]
    for _ in range(10):
        acc = CountAccumulator(hmm)
        acc.add(expected_counts(hmm, x[:25]))
        acc.add(expected_counts(hmm, x[25:]))
        assert acc.log_likelihood == pytest.approx(history[-1], rel=1e-5)
        maximize(hmm, acc.total(), step_size=1.0, pseudocount=0.0)
        hmm.validate()
        history.append(_log_likelihood(hmm, x))
    for before, after in itertools.pairwise(history):
        assert after >= before - 1e-4 * abs(before), history
    assert history[-1] > history[0] + 1.0, history


@pytest.mark.parametrize("homogeneous", [False, True])
def test_one_big_mini_batch_equals_full_batch_step(make_hmm, windows_factory, homogeneous):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=48)
    x = windows_factory(20, 4, 5, seed=49)
    mini, full = clone_hmm(hmm), clone_hmm(hmm)
    maximize(mini, expected_counts(mini, x), step_size=1.0, pseudocount=0.01)
    acc = CountAccumulator(full)
    acc.add(expected_counts(full, x[:7]))
    acc.add(expected_counts(full, x[7:]))
    maximize(full, acc.total(), step_size=1.0, pseudocount=0.01)
    for name, value in mini.parameters().items():
        torch.testing.assert_close(value, full.parameters()[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(value, hmm.parameters()[name]), f"{name} did not change"


@pytest.mark.parametrize("homogeneous", [False, True])
def test_full_m_step_is_normalised_brute_force_counts(make_hmm, windows_factory, brute_counts,
                                                      homogeneous):
    """Step size 1: theta_new = (counts + c) / sum(counts + c), counts from brute force."""
    hmm = make_hmm(3, 5, 4, homogeneous, seed=50)
    x = windows_factory(15, 4, 5, seed=51)
    want = {k: torch.from_numpy(v) for k, v in brute_counts(hmm, x).items()
            if k != "log_likelihood"}
    c = 0.1
    maximize(hmm, expected_counts(hmm, x), step_size=1.0, pseudocount=c)
    torch.testing.assert_close(hmm.initial.double(),
                               (want["initial"] + c) / (want["initial"] + c).sum(),
                               rtol=1e-4, atol=1e-5)
    trans = want["transition"] + c
    torch.testing.assert_close(hmm.transition.double(), trans / trans.sum(-1, keepdim=True),
                               rtol=1e-4, atol=1e-5)
    emis = want["emission"] + c
    torch.testing.assert_close(hmm.emission.double(), emis / emis.sum(1, keepdim=True),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("step_size", [0.3, 0.75, 1.0])
def test_step_size_mixes_old_and_new(make_hmm, windows_factory, homogeneous, step_size):
    hmm = make_hmm(3, 5, 4, homogeneous, seed=52)
    x = windows_factory(9, 4, 5, seed=53)
    old = params(hmm)
    counts = expected_counts(hmm, x)
    c = 0.05
    new_initial = (counts.initial + c) / (counts.initial + c).sum()
    trans = counts.transition + c
    new_transition = trans / trans.sum(-1, keepdim=True)
    emis = dense_emission(hmm, counts).float() + c
    new_emission = emis / emis.sum(1, keepdim=True)
    maximize(hmm, counts, step_size=step_size, pseudocount=c)
    a = step_size
    torch.testing.assert_close(hmm.initial, (1 - a) * old["initial"] + a * new_initial)
    torch.testing.assert_close(hmm.transition,
                               (1 - a) * old["transition"] + a * new_transition)
    torch.testing.assert_close(hmm.emission, (1 - a) * old["emission"] + a * new_emission)


def _assert_normalised(hmm: HMM, tol: float) -> None:
    assert torch.isfinite(hmm.emission).all() and (hmm.emission >= 0).all()
    assert (hmm.initial >= 0).all() and (hmm.transition >= 0).all()
    assert (hmm.initial.double().sum() - 1).abs().item() < tol
    assert (hmm.transition.double().sum(-1) - 1).abs().max().item() < tol
    assert (hmm.emission.double().sum(1) - 1).abs().max().item() < tol


@pytest.mark.parametrize("homogeneous", [False, True])
def test_parameters_stay_normalised_after_many_mini_batch_steps(make_hmm, windows_factory,
                                                                homogeneous):
    hmm = make_hmm(4, 30, 6, homogeneous, seed=54, sharpness=None)
    for step in range(150):
        x = windows_factory(8, 6, 30, seed=1000 + step)
        maximize(hmm, expected_counts(hmm, x), step_size=0.6, pseudocount=1e-3)
    _assert_normalised(hmm, 1e-4)
    hmm.validate(tolerance=1e-4)


def _unreachable_state_hmm(homogeneous: bool) -> HMM:
    """Three states; state 2 has no initial probability and nothing transitions into it."""
    gen = torch.Generator().manual_seed(55)
    t, v = 4, 5
    pa, pb = (1, 1) if homogeneous else (t - 1, t)
    initial = torch.tensor([0.6, 0.4, 0.0])
    transition = torch.rand(pa, 3, 3, generator=gen)
    transition[:, :, 2] = 0
    transition /= transition.sum(-1, keepdim=True)
    emission = torch.rand(pb, v, 3, generator=gen)
    emission /= emission.sum(1, keepdim=True)
    return HMM(3, v, t, homogeneous, initial=initial, transition=transition, emission=emission)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_expected_counts_are_never_negative(windows_factory, homogeneous):
    """Counts are posterior expectations: >= 0, and exactly 0 for a state no path visits."""
    hmm = _unreachable_state_hmm(homogeneous)
    counts = expected_counts(hmm, windows_factory(10, 4, 5, seed=56))
    for name in ("initial", "transition", "emission_values", "state_totals"):
        value = getattr(counts, name)
        assert (value >= 0).all(), f"{name} has negative counts: {value.min().item()}"
    assert (counts.state_totals[:, 2] == 0).all(), counts.state_totals[:, 2]


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("step_size", [0.5, 1.0])
def test_unvisited_state_keeps_its_distributions_without_pseudocount(windows_factory,
                                                                     homogeneous, step_size):
    hmm = _unreachable_state_hmm(homogeneous)
    old = params(hmm)
    x = windows_factory(10, 4, 5, seed=56)
    counts = expected_counts(hmm, x)
    assert counts.state_totals[:, 2].abs().max().item() < 1e-6  # precondition: never visited
    maximize(hmm, counts, step_size=step_size, pseudocount=0.0)
    for name, value in hmm.parameters().items():
        assert not torch.isnan(value).any(), name
    torch.testing.assert_close(hmm.emission[:, :, 2], old["emission"][:, :, 2])
    torch.testing.assert_close(hmm.transition[:, 2, :], old["transition"][:, 2, :])
    assert not torch.allclose(hmm.emission[:, :, 0], old["emission"][:, :, 0])
    hmm.validate()


def test_maximize_rejects_bad_step_size_and_pseudocount(make_hmm, windows_factory):
    """The library promises that every failure a user can cause raises an HMMLVDError."""
    hmm = make_hmm(3, 5, 4, seed=57)
    counts = expected_counts(hmm, windows_factory(3, 4, 5))
    for kwargs in ({"step_size": 0.0}, {"step_size": 1.5}, {"pseudocount": -1.0}):
        with pytest.raises(HMMLVDError):
            maximize(hmm, counts, **kwargs)


def test_maximize_rejects_bad_values_before_touching_the_model(make_hmm, windows_factory):
    hmm = make_hmm(3, 5, 4, seed=58)
    counts = expected_counts(hmm, windows_factory(3, 4, 5))
    old = params(hmm)
    with pytest.raises(ValueError, match="step size"):
        maximize(hmm, counts, step_size=0.0)
    with pytest.raises(ValueError, match="pseudocount"):
        maximize(hmm, counts, pseudocount=-0.5)
    # each pseudocount is below 1e30, but the V = 5 of one distribution sum beyond it
    with pytest.raises(ValueError, match="pseudocount"):
        maximize(hmm, counts, pseudocount=4e29)
    counts.emission_values[1, 2] = float("nan")  # counts of a corrupted E-step
    with pytest.raises(DataError, match="expected counts contain NaN or infinite values"):
        maximize(hmm, counts)
    for name, value in hmm.parameters().items():
        assert torch.equal(value, old[name])


def dense_m_step(hmm: HMM, x: torch.Tensor, step_size: float, pseudocount: float) -> None:
    """Reference M-step written out densely in float64: every emission entry is recomputed as
    (1 - a) e + a (n + c) / (N + V c), with n from brute-force scatter of the batch's rows."""
    counts = expected_counts(hmm, x)
    n = dense_emission(hmm, counts)  # [P_B, V, H]
    c, a = pseudocount, step_size
    new = (n + c) / (n.sum(1, keepdim=True) + hmm.vocab_size * c)
    hmm.emission.copy_(((1 - a) * hmm.emission.double() + a * new).float())
    for name, table in (("initial", counts.initial), ("transition", counts.transition)):
        theta = getattr(hmm, name)
        fresh = (table.double() + c) / (table.double() + c).sum(-1, keepdim=True)
        theta.copy_(((1 - a) * theta.double() + a * fresh).float())


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("step_size", [0.5, 0.1, 1.0])
def test_scaled_emission_m_steps_equal_dense_m_steps(make_hmm, windows_factory, homogeneous,
                                                     step_size):
    """Mini-batch EM through ScaledEmission (lazy per-(position, state) scale and offset, the
    table written out only when the scale gets small) equals the dense M-step to rounding, over
    enough steps at a = 0.5 that the scale falls below MIN_SCALE and is written out midway."""
    hmm = make_hmm(3, 7, 4, homogeneous, seed=5)
    reference = clone_hmm(hmm)
    scaled = ScaledEmission(hmm)
    steps = 60
    for i in range(steps):
        x = windows_factory(6, 4, 7, seed=100 + i)  # a batch touches a few of the V rows
        counts = expected_counts(hmm, x, scaled)
        maximize(hmm, counts, step_size, 1e-2, scaled)
        dense_m_step(reference, x, step_size, 1e-2)
        if i == 20:  # the gathered emissions equal those of the written-out reference
            assert torch.allclose(scaled.gather(x), reference.gather_emissions(x), rtol=1e-5)
    if step_size < 1.0:
        assert not scaled.exact  # the last steps were lazy
    scaled.materialise()
    for name, p in reference.parameters().items():
        assert torch.allclose(hmm.parameters()[name], p, rtol=1e-4, atol=1e-7), name
    hmm.validate(tolerance=1e-5)


def test_scaled_emission_is_written_out_when_the_scale_gets_small(make_hmm, windows_factory):
    hmm = make_hmm(2, 5, 3, False, seed=1)
    scaled = ScaledEmission(hmm)
    writes = 0
    for i in range(45):  # 0.5 ** 40 < MIN_SCALE = 1e-12
        maximize(hmm, expected_counts(hmm, windows_factory(4, 3, 5, seed=i), scaled), 0.5,
                 1e-3, scaled)
        writes += scaled.exact
        assert scaled.scale.min() >= ScaledEmission.MIN_SCALE
    assert writes == 1  # once, at step 40 (a = 0.5 halves the scale every step)


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("step_size", [0.5, 1.0])
def test_one_state_m_step_is_smoothed_word_frequencies(windows_factory, homogeneous,
                                                       step_size):
    """With one hidden state every posterior is 1, so the emission M-step has a closed form:
    e[p, w] <- (1 - a) e[p, w] + a (n[p, w] + c) / (N + V c), n the occurrences of w at
    position p (all positions together when homogeneous), N their total. T = 2 windows: two
    emission positions, a batch of several windows."""
    num_words, length, c = 4, 2, 0.1
    hmm = HMM(1, num_words, length, homogeneous, seed=3)
    old = hmm.emission.double().clone()  # [P_B, V, 1]
    x = windows_factory(5, length, num_words, seed=8)
    maximize(hmm, expected_counts(hmm, x), step_size, c)
    n = torch.zeros(length, num_words, dtype=torch.float64)
    for p in range(length):
        n[p] = torch.bincount(x[:, p], minlength=num_words).double()
    if homogeneous:
        n = n.sum(0, keepdim=True)
    fresh = (n + c) / (n.sum(1, keepdim=True) + num_words * c)
    want = (1 - step_size) * old[..., 0] + step_size * fresh
    torch.testing.assert_close(hmm.emission[..., 0].double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("step_size", [0.5, 1.0])
def test_m_step_from_hand_made_sparse_rows(make_hmm, step_size):
    """ExpectedCounts built by hand: five emission rows (one repeated, in no position order,
    not a multiple of the four positions) give the M-step of their dense sum."""
    hmm = make_hmm(2, 3, 4, seed=9)
    old = hmm.emission.double().clone()  # [4, 3, 2]
    rows = torch.tensor([3 * 2 + 1, 0 * 3 + 2, 3 * 3 + 0, 3 * 2 + 1, 1 * 3 + 1])  # p * V + w
    values = torch.tensor([[0.5, 1.0], [2.0, 0.0], [0.25, 0.75], [1.0, 0.5], [0.0, 3.0]])
    dense = torch.zeros(4 * 3, 2, dtype=torch.float64)
    dense.index_add_(0, rows, values.double())
    n = dense.view(4, 3, 2)
    counts = ExpectedCounts(initial=torch.ones(2), transition=torch.ones(3, 2, 2),
                            emission_rows=rows, emission_values=values,
                            state_totals=n.sum(1).float(), log_likelihood=0.0, num_windows=1)
    c = 0.2
    maximize(hmm, counts, step_size, c)
    seen = n.sum(1, keepdim=True) > 0  # [4, 1, 2]: a state without counts keeps its column
    fresh = (n + c) / (n.sum(1, keepdim=True) + 3 * c)
    want = torch.where(seen, (1 - step_size) * old + step_size * fresh, old)
    torch.testing.assert_close(hmm.emission.double(), want, rtol=1e-5, atol=1e-7)


def test_expected_counts_need_full_windows(make_hmm, windows_factory):
    """The E-step's counts belong to positions 0..T-1: windows shorter than T are refused."""
    hmm = make_hmm(3, 5, 4, seed=59)
    with pytest.raises(HMMLVDError, match="length"):
        expected_counts(hmm, windows_factory(3, 3, 5))


@pytest.mark.parametrize("homogeneous", [False, True])
def test_em_builds_its_tensors_on_the_model_device(homogeneous):
    """With torch's default device elsewhere (here "meta", which holds no values), making a
    CPU model, mini-batch steps on the scaled emission table, a chunked E-step and a
    full-batch step through the count accumulator give the CPU numbers."""
    x = torch.randint(0, 6, (9, 4), generator=torch.Generator().manual_seed(1))

    def run() -> list[torch.Tensor]:
        hmm = HMM(3, 6, 4, homogeneous, seed=2)
        scaled = ScaledEmission(hmm)
        for piece in x.split(3):
            maximize(hmm, expected_counts(hmm, piece, scaled, chunk_size=2), 0.5, 1e-3, scaled)
        scaled.materialise()
        accumulator = CountAccumulator(hmm)
        for piece in x.split(4):
            accumulator.add(expected_counts(hmm, piece, chunk_size=3))
        maximize(hmm, accumulator.total(), 1.0, 1e-3)
        return list(hmm.parameters().values())

    assert_same_with_the_default_device_elsewhere(run)
