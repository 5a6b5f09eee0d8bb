"""The EM core every model shares (hmmlvd.em): the M-step rule against a plain per-row
reference, the probability-zero check, the epoch shuffle, and the epoch loop's order of calls,
resume position, stop and failure paths (with a recording learner), plus the HMM's failure path
end to end; EM config records (the HMM's earlier phases form, records of the wrong kind) and
stop requests before EM's first checkpoint (check_stop, a second signal)."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.em import (
    EarlyStopping,
    Progress,
    check_possible,
    em_config,
    epoch_batches,
    epoch_order,
    linear_anneal,
    mix_log_probabilities,
    mix_probabilities,
    run_epochs,
)
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import (
    StoppedAtOnce,
    StoppedBeforeCheckpoint,
    check_stop,
    signals_request_stop,
    stop_requested,
)
from hmmlvd.hmm import HMM


def reference_rule(theta: list[float], counts: list[float], a: float, c: float,
                   valid: list[bool] | None = None) -> list[float]:
    """One distribution, in plain Python, as the docstring of hmmlvd.em.rule states it."""
    if sum(counts) == 0:
        return list(theta)
    valid = valid or [True] * len(theta)
    smoothed = [(n + c) if ok else 0.0 for n, ok in zip(counts, valid, strict=True)]
    total = sum(smoothed)
    if total == 0:
        return list(theta)
    return [(1 - a) * t + a * s / total for t, s in zip(theta, smoothed, strict=True)]


@pytest.mark.parametrize("a, c", [(1.0, 0.0), (0.3, 0.0), (0.7, 0.5), (1.0, 2.0)])
def test_rule_matches_the_per_row_reference(a, c):
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(4, 3, 5, generator=gen, dtype=torch.float64)
    theta /= theta.sum(-1, keepdim=True)
    counts = torch.rand(4, 3, 5, generator=gen, dtype=torch.float64) * 3
    counts[1, 2] = 0  # a distribution no data reached
    counts[2, 0, :2] = 0  # partly reached
    got = mix_probabilities(theta, counts, (-1,), a, c)
    for i in range(4):
        for j in range(3):
            want = reference_rule(theta[i, j].tolist(), counts[i, j].tolist(), a, c)
            assert got[i, j].tolist() == pytest.approx(want, rel=1e-12)
    assert torch.equal(got[1, 2], theta[1, 2])  # unreached: unchanged, bit for bit


def test_rule_keeps_structural_zeros_on_probabilities():
    """``valid`` marks the entries that may be non-zero: the others stay 0 and the rest share
    the distribution's mass, as the per-row reference gives it."""
    gen = torch.Generator().manual_seed(2)
    valid = torch.tensor([1.0, 0.0, 1.0, 1.0])
    theta = torch.rand(3, 4, generator=gen, dtype=torch.float64) * valid
    theta /= theta.sum(-1, keepdim=True)
    counts = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    got = mix_probabilities(theta, counts, (-1,), 0.6, 0.3, valid)
    for i in range(3):
        want = reference_rule(theta[i].tolist(), counts[i].tolist(), 0.6, 0.3,
                              [bool(v) for v in valid])
        assert got[i].tolist() == pytest.approx(want, rel=1e-12)
    assert (got[:, 1] == 0).all()
    # counts only where nothing may be, no pseudocount: nothing to normalise, theta stays
    only_invalid = torch.tensor([[0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    got = mix_probabilities(theta[:1], only_invalid, (-1,), 0.6, 0.0, valid)
    assert got.tolist() == [reference_rule(theta[0].tolist(), only_invalid[0].tolist(), 0.6,
                                           0.0, [bool(v) for v in valid])]
    assert torch.equal(got, theta[:1])


def test_rule_over_two_dims_with_structural_zeros_in_log_space():
    gen = torch.Generator().manual_seed(1)
    valid = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # entry (0, 1) may never be non-zero
    log_theta = torch.log(torch.tensor([[0.5, 0.0], [0.25, 0.25]], dtype=torch.float64))
    log_theta = log_theta.expand(3, 2, 2).clone()
    counts = torch.rand(3, 2, 2, generator=gen, dtype=torch.float64)
    counts[2] = 0
    got = mix_log_probabilities(log_theta, counts, (1, 2), 0.4, 0.1, valid)
    for i in range(2):
        want = reference_rule(log_theta[i].exp().flatten().tolist(), counts[i].flatten().tolist(),
                              0.4, 0.1, [bool(v) for v in valid.flatten()])
        assert got[i].exp().flatten().tolist() == pytest.approx(want, rel=1e-12)
        assert got[i, 0, 1] == -math.inf
    assert torch.equal(got[2], log_theta[2])


def test_check_possible_names_the_impossible_items():
    check_possible(torch.tensor([-1.0, -2.0]))
    with pytest.raises(DataError, match=r"^samples \[1, 3\] have probability 0 under the "
                                        r"circuit, so EM cannot assign them; train with a "
                                        r"pseudocount > 0$"):
        check_possible(torch.tensor([0.0, -math.inf, -1.0, math.nan]), "samples", "circuit")


def test_epoch_batches_cover_everything_once_in_a_fixed_order_per_epoch():
    batches = epoch_batches(10, 3, seed=5, epoch=2)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = np.concatenate(epoch_batches(10, 3, seed=5, epoch=2))
    assert np.array_equal(np.concatenate(batches), again)
    assert not np.array_equal(epoch_order(50, 5, 2), epoch_order(50, 5, 3))
    assert not np.array_equal(epoch_order(50, 5, 2), epoch_order(50, 6, 2))
    skipped = epoch_batches(10, 3, seed=5, epoch=2, start_batch=2)
    assert np.array_equal(np.concatenate(skipped), np.concatenate(batches[2:]))
    assert np.array_equal(np.concatenate(epoch_batches(7, 2, 0, 0, shuffle=False)),
                          np.arange(7))


class Recorder:
    """A learner that records the calls the loop makes; e_step returns (-len, len)."""

    def __init__(self, fail_on=None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def begin_epoch(self, full_batch):
        self.calls.append(f"begin({'full' if full_batch else 'mini'})")

    def e_step(self, batch):
        if batch == self.fail_on:
            raise DataError("bad batch")
        self.calls.append(f"e{batch}")
        return -2.0, 1

    def m_step(self, step_size, pseudocount):
        self.calls.append(f"m{step_size}")

    def sync(self):
        self.calls.append("sync")

    def end_epoch(self):
        self.calls.append("end")

    def discard(self):
        self.calls.append("discard")


def batches_of(n):
    return lambda epoch, full_batch, start: [f"{epoch}.{b}" for b in range(start, n)]


def test_loop_orders_mini_and_full_batch_epochs():
    learner = Recorder()
    stats = run_epochs(learner, [(0.5, False), (1.0, True)], 0.0, batches_of(2), 2,
                       progress=False)
    assert learner.calls == ["begin(mini)", "e0.0", "m0.5", "e0.1", "m0.5", "sync", "end",
                             "begin(full)", "e1.0", "e1.1", "m1.0", "sync", "end"]
    assert [(s.epoch, s.full_batch, s.mean_log_likelihood) for s in stats] == [
        (1, False, -2.0), (2, True, -2.0)]


def test_loop_resumes_mid_epoch_and_checkpoints_between_batches_only():
    learner, seen = Recorder(), []
    state = Progress(epoch=0, batch=1, step=1)
    run_epochs(learner, [(0.5, False), (0.5, False)], 0.0, batches_of(3), 3, state,
               progress=False, after_step=lambda s: seen.append((s.epoch, s.batch, s.step)))
    assert learner.calls[:5] == ["begin(mini)", "e0.1", "m0.5", "e0.2", "m0.5"]
    assert seen == [(0, 2, 2), (1, 1, 4), (1, 2, 5)]  # never after an epoch's last batch
    assert (state.epoch, state.batch, state.step) == (2, 0, 6)


@pytest.mark.parametrize("full_batch", [False, True])
def test_loop_stop_syncs_then_hands_over_where_it_stands(full_batch):
    learner, stopped = Recorder(), []
    state = Progress()
    run_epochs(learner, [(0.5, full_batch)], 0.0, batches_of(3), 3, state, progress=False,
               stop_requested=lambda: learner.calls.count("e0.0") > 0,
               on_stop=lambda s, fb: stopped.append((s.batch, s.step, fb)))
    assert learner.calls[-1] == "sync"
    # a mini-batch epoch stops after its first step; a full-batch one restarts from batch 0
    assert stopped == [(0, 0, True)] if full_batch else [(1, 1, False)]


def test_loop_discards_counts_of_a_failed_batch():
    learner = Recorder(fail_on="0.1")
    with pytest.raises(DataError, match="bad batch"):
        run_epochs(learner, [(1.0, True)], 0.0, batches_of(3), 3, progress=False)
    assert learner.calls == ["begin(full)", "e0.0", "discard"]


def test_hmm_left_valid_when_a_mini_batch_epoch_fails():
    """Mini-batch EM keeps the emission table lazily scaled; a batch that fails (here a window
    of probability 0, with pseudocount 0) must leave normalised parameters behind."""
    good = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    bad = [0, 2, 0]
    order = epoch_order(4, 0, 0)
    windows = [None] * 4
    windows[int(order[-1])] = bad  # visited last, after three M-steps
    for i, w in zip([int(k) for k in order[:-1]], good, strict=True):
        windows[i] = w
    emission = torch.tensor([[[0.6, 0.5], [0.4, 0.5], [0.0, 0.0]]]).expand(3, 3, 2).clone()
    hmm = HMM(2, 3, 3, initial=torch.tensor([0.5, 0.5]),
              transition=torch.full((2, 2, 2), 0.5), emission=emission.clone())
    config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=1, pseudocount=0.0)
    with pytest.raises(DataError, match="probability 0"):
        hmm.fit(torch.tensor(windows), config, progress=False)
    torch.testing.assert_close(hmm.emission.sum(1), torch.ones(3, 2))
    assert not torch.equal(hmm.emission, emission)  # the three good steps were kept


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    weight = torch.zeros(2)
    scores = iter([1.0, 3.0, 2.0, 2.5, 5.0])

    def score():
        return next(scores)

    early = EarlyStopping(score, lambda: {"w": weight}, patience=2)
    stops = []
    for epoch in range(1, 5):
        weight.fill_(float(epoch))  # the parameters after this epoch
        stops.append(early(Progress(epoch=epoch), None))
    assert stops == [False, False, False, True]  # epoch 2 best, then 2 epochs without better
    assert early.best_epoch == 2 and early.scores == [1.0, 3.0, 2.0, 2.5]
    early.restore()
    assert weight.tolist() == [2.0, 2.0]


def test_loop_ends_when_the_epoch_hook_says_so():
    learner = Recorder()
    stats = run_epochs(learner, [(1.0, True)] * 5, 0.0, batches_of(1), 1, progress=False,
                       after_epoch=lambda state, stats: state.epoch == 2)
    assert len(stats) == 2 and learner.calls.count("m1.0") == 2


def test_circuit_fit_with_held_out_data_keeps_its_best_epoch():
    from hmmlvd.pc import Circuit, EMConfig, poon_domingos

    gen = torch.Generator().manual_seed(1)  # 12 training samples: valid peaks, then falls
    train = torch.randint(0, 3, (12, 4), generator=gen)
    valid = torch.randint(0, 3, (40, 4), generator=gen)
    circuit = Circuit(poon_domingos(2, 2, delta=1), 3, input="categorical", num_categories=3,
                      seed=0)
    circuit.fit(train, EMConfig(epochs=6, full_batch=True, batch_size=12, pseudocount=0.01,
                                final_full_batch=0, step_size=1.0),
                valid=valid, progress=False)
    history = circuit.valid_history
    assert len(circuit.fit_history) == 6 and len(history) == 6
    assert history.index(max(history)) < 5  # the best epoch is not the last one ...
    assert circuit.score(valid) == pytest.approx(max(history), abs=1e-6)  # ... and it is kept
    with pytest.raises(DataError, match="patience needs held-out data"):
        circuit.fit(train, EMConfig(patience=1, final_full_batch=0, step_size=1.0), progress=False)
    with pytest.raises(DataError, match="patience must be"):
        EMConfig(patience=-1, final_full_batch=0, step_size=1.0)


def test_restarted_patience_counts_from_the_new_phase():
    weight = torch.zeros(1)
    scores = iter([3.0, 1.0, 1.5, 2.0, 2.5])
    early = EarlyStopping(lambda: next(scores), lambda: {"w": weight}, patience=2)
    assert [early(Progress(), None) for _ in range(3)] == [False, False, True]
    early.restart_patience()
    # a new phase gets its own patience, counted from its start (not from epoch 1: that would
    # stop it after its first epoch)
    assert [early(Progress(), None) for _ in range(2)] == [False, True]
    assert early.best_epoch == 1


def test_final_full_batch_epochs_are_classic_em_after_the_mini_batch_ones():
    """EMConfig(epochs=2, final_full_batch=2) trains as two fits do: 2 mini-batch epochs,
    then 2 full-batch epochs at step size 1 (each the exact M-step of all the data)."""
    from hmmlvd.pc import Circuit, EMConfig, poon_domingos

    gen = torch.Generator().manual_seed(3)
    data = torch.randint(0, 4, (30, 4), generator=gen)

    def fresh() -> Circuit:
        return Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical", num_categories=4,
                       seed=5)

    both = fresh().fit(data, EMConfig(epochs=2, batch_size=7, step_size=0.5, pseudocount=0.1,
                                      final_full_batch=2), progress=False)
    twice = fresh().fit(data, EMConfig(epochs=2, batch_size=7, step_size=0.5, pseudocount=0.1,
                                       final_full_batch=0),
                        progress=False)
    twice.fit(data, EMConfig(epochs=2, batch_size=30, step_size=1.0, pseudocount=0.1,
                             full_batch=True, final_full_batch=0), progress=False)
    assert len(both.fit_history) == 4
    for p, q in zip(both.parameters(), twice.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    history = both.fit_history
    assert history[3] >= history[2] - 1e-6  # classic EM never lowers the likelihood
    with pytest.raises(DataError, match="final_full_batch must be"):
        EMConfig(final_full_batch=-1, step_size=1.0)


def test_pseudocount_per_data_is_a_prior_over_the_training_set():
    """pseudocount_per="data": a mini-batch M-step of B of N samples adds pseudocount * B / N,
    a full-batch one the whole pseudocount: the same as two fits with those pseudocounts."""
    from hmmlvd.pc import Circuit, EMConfig, poon_domingos

    gen = torch.Generator().manual_seed(4)
    data = torch.randint(0, 4, (30, 4), generator=gen)

    def fresh() -> Circuit:
        return Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical", num_categories=4,
                       seed=6)

    per_data = fresh().fit(data, EMConfig(epochs=2, batch_size=7, step_size=0.5,
                                          pseudocount=0.6, final_full_batch=2,
                                          pseudocount_per="data"), progress=False)
    twice = fresh().fit(data, EMConfig(epochs=2, batch_size=7, step_size=0.5,
                                       pseudocount=0.6 * 7 / 30, final_full_batch=0),
                        progress=False)
    twice.fit(data, EMConfig(epochs=2, batch_size=30, pseudocount=0.6, full_batch=True,
                             final_full_batch=0, step_size=1.0),
              progress=False)
    per_batch = fresh().fit(data, EMConfig(epochs=2, batch_size=7, step_size=0.5,
                                           pseudocount=0.6, final_full_batch=2), progress=False)
    for p, q, r in zip(per_data.parameters(), twice.parameters(), per_batch.parameters(),
                       strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(p, r, atol=1e-3)  # per batch it smooths more
    with pytest.raises(DataError, match="pseudocount_per must be one of"):
        EMConfig(pseudocount_per="epoch", final_full_batch=0, step_size=1.0)


def test_annealed_step_sizes_fall_linearly_over_all_steps_and_resume_in_place():
    """linear_anneal(first, last, E) with n batches an epoch: the E * n M-steps use
    linspace(first, last, E * n); a run resumed mid-epoch continues the same sequence;
    full-batch epochs (one step each) anneal over the epochs."""
    learner = Recorder()
    run_epochs(learner, [(a, False) for a in linear_anneal(0.5, 0.1, 2)], 0.0, batches_of(3),
               3, progress=False)
    steps = [float(c[1:]) for c in learner.calls if c.startswith("m")]
    np.testing.assert_allclose(steps, np.linspace(0.5, 0.1, 6), rtol=1e-12)
    resumed = Recorder()
    run_epochs(resumed, [(a, False) for a in linear_anneal(0.5, 0.1, 2)], 0.0, batches_of(3),
               3, Progress(epoch=1, batch=1, step=4), progress=False)
    steps = [float(c[1:]) for c in resumed.calls if c.startswith("m")]
    np.testing.assert_allclose(steps, np.linspace(0.5, 0.1, 6)[4:], rtol=1e-12)
    full = Recorder()
    stats = run_epochs(full, [(a, True) for a in linear_anneal(0.9, 0.3, 3)], 0.0,
                       batches_of(2), 2, progress=False)
    steps = [float(c[1:]) for c in full.calls if c.startswith("m")]
    np.testing.assert_allclose(steps, [0.9, 0.6, 0.3], rtol=1e-12)
    assert [s.step_size for s in stats] == pytest.approx([0.9, 0.6, 0.3])


def test_circuit_fit_with_final_step_size_is_em_at_the_annealed_steps():
    """EMConfig(final_step_size=...) trains as em_step does by hand, batch by batch in the
    epochs' order, at step sizes linspace(step_size, final_step_size, all steps)."""
    from hmmlvd.pc import Circuit, EMConfig, poon_domingos
    from hmmlvd.pc.em import em_step

    gen = torch.Generator().manual_seed(7)
    data = torch.randint(0, 4, (30, 4), generator=gen)

    def fresh() -> Circuit:
        return Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical", num_categories=4,
                       seed=2)

    config = EMConfig(epochs=3, batch_size=7, step_size=0.8, final_step_size=0.05,
                      pseudocount=0.1, seed=4, final_full_batch=0)
    annealed = fresh().fit(data, config, progress=False)
    by_hand = fresh()
    batches = [b for e in range(3) for b in epoch_batches(30, 7, 4, e)]
    for batch, a in zip(batches, np.linspace(0.8, 0.05, len(batches)), strict=True):
        em_step(by_hand, data[torch.as_tensor(batch)], float(a), 0.1)
    constant = fresh().fit(data, EMConfig(epochs=3, batch_size=7, step_size=0.8,
                                          pseudocount=0.1, seed=4, final_full_batch=0),
                           progress=False)
    for p, q, r in zip(annealed.parameters(), by_hand.parameters(), constant.parameters(),
                       strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(p, r, atol=1e-3)
    for bad in (0, 1.5, True, float("nan")):
        with pytest.raises(DataError, match="step size"):
            EMConfig(final_step_size=bad, final_full_batch=0, step_size=1.0)


# ----- EM config records, one-step anneals, stop requests -----------------------------------

def test_an_anneal_of_one_step_uses_the_first_step_size():
    """linear_anneal over T = 1 M-step (one full-batch epoch, or one epoch of one batch) is
    that step at ``first``: there is no second step to fall towards ``last``."""
    for full_batch in (True, False):
        learner = Recorder()
        stats = run_epochs(learner, [(a, full_batch) for a in linear_anneal(0.5, 0.1, 1)], 0.0,
                           batches_of(1), 1, progress=False)
        assert [c for c in learner.calls if c.startswith("m")] == ["m0.5"]
        assert [s.step_size for s in stats] == [0.5]


@pytest.mark.parametrize(("phases", "expected"), [
    ([{"epochs": 2, "step_size": 0.3}],  # no full_batch key: a mini-batch phase
     EMConfig(epochs=2, step_size=0.3, final_full_batch=0)),
    ([{"epochs": 2, "step_size": 1.0, "full_batch": False}],  # mini-batch at step size 1
     EMConfig(epochs=2, step_size=1.0, final_full_batch=0)),
    ([{"epochs": 3, "step_size": 1.0, "full_batch": True}],  # full-batch epochs alone
     EMConfig(epochs=0, final_full_batch=3)),
    ([{"epochs": 1, "step_size": 0.5}, {"epochs": 1, "step_size": 1.0, "full_batch": True}],
     EMConfig(epochs=1, step_size=0.5, final_full_batch=1)),
    ([], EMConfig(epochs=0, final_full_batch=0)),
], ids=["one-phase", "mini-batch-at-1", "full-batch-only", "one-phase-then-full", "none"])
def test_each_earlier_phases_record_reads_as_its_schedule(phases, expected):
    assert EMConfig.from_dict({"phases": phases}) == expected


@pytest.mark.parametrize(("phases", "message"), [
    ([{"epochs": 1, "step_size": 0.5, "full_batch": True}], "not a schedule"),
    ([{"epochs": 1, "step_size": 0.5}] * 3, "not a schedule"),
    ([{"step_size": 0.5}], "unreadable phases record: 'epochs'"),
    (5, "unreadable phases record: 'int' object is not iterable"),
], ids=["full-batch-below-1", "three-phases", "no-epochs", "not-a-list"])
def test_a_phases_record_no_schedule_expresses_is_refused(phases, message):
    """Full-batch epochs at a step size below 1 and a third mini-batch phase have no EMConfig
    field: reading them as some other schedule would resume a different run."""
    with pytest.raises(DataError, match=message):
        EMConfig.from_dict({"phases": phases})


def test_em_config_records_and_arguments_of_the_wrong_kind_are_named():
    with pytest.raises(DataError) as info:
        EMConfig.from_dict([2, 0.3])
    assert str(info.value) == "an EM config must be a JSON object, got list"
    with pytest.raises(DataError) as info:  # e.g. a checkpoint of a newer hmmlvd
        EMConfig.from_dict({"epochs": 1, "colour": "red", "anneal": 2})
    assert str(info.value) == "unknown EM settings ['anneal', 'colour']"
    with pytest.raises(DataError) as info:
        em_config({"epochs": 2})
    assert str(info.value) == ("config must be an EMConfig, got dict (give epochs, batch_size, "
                               "... by keyword)")
    with pytest.raises(TypeError, match="progress must be an object, got list"):
        Progress.from_dict([0, 1])


@pytest.mark.parametrize(("signum", "by"), [(signal.SIGINT, ""), (signal.SIGTERM, " by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_makes_check_stop_raise_and_a_second_one_stops_at_once(signum, by):
    """Under signals_request_stop a first signal only asks for a stop: check_stop (called by
    the work before EM's first checkpoint after each step) then raises StoppedBeforeCheckpoint
    naming what was under way, the signal and how to go on; a second signal raises
    StoppedAtOnce carrying its number (the command line exits with 128 + it)."""
    assert stop_requested() == 0
    with signals_request_stop():
        check_stop("learning a Chow–Liu tree")  # no request yet: nothing happens
        os.kill(os.getpid(), signum)
        assert stop_requested() == signum
        with pytest.raises(StoppedBeforeCheckpoint) as info:
            check_stop("learning a Chow–Liu tree")
        assert str(info.value) == (f"stopped{by} while learning a Chow–Liu tree, before the "
                                   "first checkpoint: nothing was saved. Run the same command "
                                   "again (with or without --resume) to start over")
        assert info.value.signal == signum and info.value.doing == "learning a Chow–Liu tree"
        with pytest.raises(StoppedAtOnce) as again:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between two bytecodes of this thread
                pass
        assert again.value.signal == signal.SIGTERM
    assert stop_requested() == 0
    check_stop("learning a Chow–Liu tree")  # no active block: nothing to stop


# ----- early stopping: ties, defaults, its argument check -------------------------------------

def test_an_equal_held_out_score_is_no_improvement():
    """Patience counts epochs without a *better* score: a plateau (EM converged, the same
    score again) runs out of patience, and the first epoch of the plateau stays the best."""
    weight = torch.zeros(1)
    scores = iter([1.0, 3.0, 3.0, 3.0, 3.0])
    early = EarlyStopping(lambda: next(scores), lambda: {"w": weight}, patience=2)
    stops = []
    for epoch in range(1, 5):
        weight.fill_(float(epoch))
        stops.append(early(Progress(epoch=epoch), None))
    assert stops == [False, False, False, True]
    assert early.best_epoch == 2 and early.best_score == 3.0
    early.restore()
    assert weight.tolist() == [2.0]


def test_early_stopping_by_default_never_stops_and_restores_nothing_before_an_epoch():
    """``patience`` 0 (the default): never stop early, still keep and restore the best;
    :meth:`restore` before any epoch was scored leaves the model as it is."""
    weight = torch.full((2,), 7.0)
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    early = EarlyStopping(lambda: next(scores), lambda: {"w": weight})
    early.restore()  # nothing scored yet
    assert weight.tolist() == [7.0, 7.0]
    stops = []
    for epoch in range(1, 7):
        weight.fill_(float(epoch))
        stops.append(early(Progress(epoch=epoch), None))
    assert stops == [False] * 6  # six epochs worse than the first: no stop
    early.restore()
    assert weight.tolist() == [1.0, 1.0]
    for bad in (-1, 1.5, True):
        with pytest.raises(DataError, match=r"^patience must be"):
            EarlyStopping(lambda: 0.0, lambda: {"w": weight}, patience=bad)
