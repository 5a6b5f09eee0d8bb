"""The training loop (hmmlvd.hmm.train): it learns, checkpoints, and resumes exactly."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import signal

import pytest
import torch
from conftest import save_hmm_checkpoint, signal_during_e_step

from hmmlvd.core import memory as device_memory
from hmmlvd.core.errors import CheckpointError, DataError, InsufficientMemoryError
from hmmlvd.data import TokenWindows
from hmmlvd.em import Progress, epoch_seed
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM, expected_counts, load_checkpoint, maximize, memory, train

# hmmlvd.hmm re-exports the function ``train``, which shadows the module attribute.
train_module = importlib.import_module("hmmlvd.hmm.train")

H, V, T = 4, 8, 5


@pytest.fixture(scope="module")
def windows() -> TokenWindows:
    """Windows over a stream of 600 tokens drawn from a known (teacher) HMM."""
    from conftest import peaked_hmm

    teacher = peaked_hmm(H, V, T, seed=91, sharpness=2.5)
    stream = teacher.sample(120, generator=torch.Generator().manual_seed(92)).flatten()
    return TokenWindows(stream.numpy(), T)


@pytest.fixture(scope="module")
def held_out() -> TokenWindows:
    """Held-out windows from another teacher: with step size 0.5 their log-likelihood rises
    for two epochs and falls in the third."""
    from conftest import peaked_hmm

    teacher = peaked_hmm(H, V, T, seed=96, sharpness=2.5)
    stream = teacher.sample(3, generator=torch.Generator().manual_seed(94)).flatten()
    return TokenWindows(stream.numpy(), T)


def student(seed: int = 93) -> HMM:
    return HMM(H, V, T, seed=seed)


def mean_log_likelihood(hmm: HMM, windows: TokenWindows) -> float:
    return hmm.log_likelihood(windows[:]).double().mean().item()


def assert_same_parameters(a: HMM, b: HMM) -> None:
    for name, value in a.parameters().items():
        assert torch.allclose(value, b.parameters()[name], rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("full_batch", [False, True])
def test_training_increases_likelihood(tmp_path, windows, full_batch):
    hmm = student()
    before = mean_log_likelihood(hmm, windows)
    config = EMConfig(epochs=2, step_size=0.5, final_full_batch=0, batch_size=64,
                      full_batch=full_batch, checkpoint_every=3)
    state = train(hmm, windows, config, out=tmp_path, progress=False)
    after = mean_log_likelihood(hmm, windows)
    assert after > before + 0.1, (before, after)
    hmm.validate()
    assert state.epoch == 2 and state.batch == 0
    num_batches = windows.num_batches(64)
    assert state.step == (2 if full_batch else 2 * num_batches)
    assert [row["epoch"] for row in state.history] == [1, 2]
    assert all(row["step_size"] == 0.5 for row in state.history)


class Crash(Exception):
    pass


def crash_after(monkeypatch, calls: int) -> None:
    """Make the E-step raise on call number ``calls + 1``, like a run killed mid-epoch."""
    real = train_module.expected_counts
    seen = {"n": 0}

    def counting(hmm, x, *rest):
        if seen["n"] == calls:
            raise Crash
        seen["n"] += 1
        return real(hmm, x, *rest)

    monkeypatch.setattr(train_module, "expected_counts", counting)


@pytest.mark.parametrize(("full_batch", "crash_at"),
                         [(False, 5), (False, 10), (False, 13), (False, 18), (True, 14)])
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, monkeypatch, windows,
                                                        full_batch, crash_at):
    """10 batches per epoch, 2 epochs, a checkpoint every 4 steps (mini-batch) or at epoch
    ends: a crash after ``crash_at`` E-steps, between checkpoints (5, 13, 18; full batch 14)
    or right after the end of epoch 1 (10), resumes to the parameters of the uninterrupted
    run."""
    config = EMConfig(epochs=1, step_size=0.7, phase2_epochs=1, phase2_step_size=0.4,
                      final_full_batch=0, batch_size=60, full_batch=full_batch,
                      checkpoint_every=4, seed=5)
    assert windows.num_batches(60) == 10

    reference = student()
    ref_state = train(reference, windows, config, out=tmp_path / "ref", progress=False)

    out = tmp_path / "run"
    crash_after(monkeypatch, crash_at)
    with pytest.raises(Crash):
        train(student(), windows, config, out=out, progress=False)
    monkeypatch.undo()

    hmm, loaded_config, checkpoints = load_checkpoint(out)
    assert loaded_config == config
    # the checkpoint resumed from is the newest one written before the crash
    assert checkpoints.progress.step == (1 if full_batch else max(
        s for s in (4, 8, 10, 12, 16) if s <= crash_at))
    final = train(hmm, windows, loaded_config, progress=False, checkpoints=checkpoints)
    assert_same_parameters(hmm, reference)
    assert (final.epoch, final.batch, final.step) == (ref_state.epoch, ref_state.batch,
                                                      ref_state.step)
    assert [r["epoch"] for r in final.history] == [r["epoch"] for r in ref_state.history]
    # an epoch resumed part-way reports the mean over all its batches, as uninterrupted
    assert ([r["train_ll_per_token"] for r in final.history]
            == pytest.approx([r["train_ll_per_token"] for r in ref_state.history], rel=1e-9))
    # the final checkpoint of the resumed run is the final model too
    resumed, _, last = load_checkpoint(out)
    assert_same_parameters(resumed, reference)
    assert last.progress.step == ref_state.step


def test_resuming_changes_the_outcome_if_batches_were_replayed_wrongly(tmp_path, monkeypatch,
                                                                       windows):
    """Guard for the resume test: a different shuffling seed gives different parameters, so
    equality above really depends on replaying the same batches."""
    a, b = student(), student()
    base = {"epochs": 1, "step_size": 0.7, "final_full_batch": 0, "batch_size": 60}
    train(a, windows, EMConfig(**base, seed=1), progress=False)
    train(b, windows, EMConfig(**base, seed=2), progress=False)
    assert not torch.allclose(a.emission, b.emission, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("signum", "by"), [(signal.SIGINT, ""), (signal.SIGTERM, " by SIGTERM")])
def test_a_signal_without_an_output_folder_stops_after_the_batch_and_says_nothing_was_saved(
        monkeypatch, windows, signum, by):
    config = EMConfig(epochs=2, step_size=0.5, final_full_batch=0, batch_size=60, seed=5)
    reference = student()
    train(reference, windows, dataclasses.replace(config, epochs=1), progress=False)
    hmm = student()
    signal_during_e_step(monkeypatch, windows.num_batches(60), signum)  # the epoch's last
    with pytest.raises(train_module.TrainingInterrupted) as info:
        train(hmm, windows, config, progress=False)
    assert info.value.signal == signum
    assert str(info.value) == f"training interrupted{by} (no output folder: nothing saved)"
    # the batch under way was finished: the parameters are those after one whole epoch
    assert_same_parameters(hmm, reference)


def test_a_sigterm_checkpoints_the_batch_and_the_early_stopping_state(tmp_path, monkeypatch,
                                                                        windows, held_out):
    """SIGTERM in epoch 3 of 3, whose held-out score is worse than epoch 2's: the checkpoint
    holds that step and the early-stopping state, so the resumed run restores epoch 2 as the
    uninterrupted run does (without the state it would keep epoch 3)."""
    config = EMConfig(epochs=3, step_size=0.5, final_full_batch=0, batch_size=60, seed=5,
                      patience=1, checkpoint_every=0)
    reference = student()
    ref_state = train(reference, windows, config, progress=False, valid=held_out)
    out = tmp_path / "run"
    scores = [r["valid_ll_per_window"] for r in ref_state.history]
    assert len(scores) == 3 and scores[2] < scores[1] > scores[0]  # the case under test
    signal_during_e_step(monkeypatch, 23, signal.SIGTERM)
    with pytest.raises(train_module.TrainingInterrupted) as info:
        train(student(), windows, config, out=out, progress=False, valid=held_out)
    monkeypatch.undo()
    assert info.value.signal == signal.SIGTERM
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert str(info.value) == (f"training interrupted by SIGTERM at epoch 3, batch 3; "
                               f"checkpoint saved in {out / 'checkpoints' / latest}. Resume "
                               "with the same command plus --resume")
    hmm, loaded_config, checkpoints = load_checkpoint(out)
    assert (checkpoints.progress.epoch, checkpoints.progress.batch,
            checkpoints.progress.step) == (2, 3, 23)
    final = train(hmm, windows, loaded_config, progress=False, valid=held_out,
                  checkpoints=checkpoints)
    assert_same_parameters(hmm, reference)
    assert [r["valid_ll_per_window"] for r in final.history] == \
        pytest.approx([r["valid_ll_per_window"] for r in ref_state.history], rel=1e-6)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keeps_at_most_keep_checkpoints(tmp_path, windows, keep):
    config = EMConfig(epochs=2, step_size=0.5, final_full_batch=0, batch_size=100,
                      checkpoint_every=2, keep_checkpoints=keep)
    hmm = student()
    state = train(hmm, windows, config, out=tmp_path, progress=False)
    root = tmp_path / "checkpoints"
    folders = sorted(p.name for p in root.glob("ckpt-*"))
    assert len(folders) == keep, folders
    latest = (root / "latest").read_text().strip()
    assert latest == folders[-1]
    saved = json.loads((root / latest / "checkpoint.json").read_text())["progress"]
    assert saved["step"] == state.step and saved["epoch"] == 2
    assert_same_parameters(load_checkpoint(tmp_path)[0], hmm)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_load_checkpoint_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_load_checkpoint_with_latest_pointing_nowhere(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000042\n")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["../../elsewhere", "../checkpoints/../../elsewhere",
                                  "ABSOLUTE", "ckpt-00000001/../../../elsewhere"])
def test_latest_never_leads_outside_the_output_folder(tmp_path, name):
    """`latest` is read from disk; a name that is not ckpt-NNNNNNNN (a relative path up and
    out, or an absolute one) is refused, even where a complete checkpoint waits there."""
    out = tmp_path / "a" / "run"
    config = EMConfig(batch_size=2)
    save_hmm_checkpoint(student(), config, Progress(step=1), out)
    decoy = save_hmm_checkpoint(student(seed=5), config, Progress(step=7), tmp_path / "decoy")
    elsewhere = tmp_path / "a" / "elsewhere"  # beside the output folder
    decoy.rename(elsewhere)
    name = str(elsewhere) if name == "ABSOLUTE" else name
    assert (out / "checkpoints" / name / "checkpoint.json").is_file()  # would load
    (out / "checkpoints" / "latest").write_text(name + "\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(out)


def test_windows_of_the_wrong_length(windows):
    with pytest.raises(DataError, match="T="):
        train(HMM(H, V, T + 1, seed=0), windows, EMConfig(), progress=False)


@pytest.mark.parametrize("length", [T - 2, T + 1])
def test_held_out_windows_of_the_wrong_length(windows, length):
    """Refused before the first batch: shorter held-out windows would be scored as prefixes
    (a log-likelihood of fewer tokens), longer ones would fail after the first epoch."""
    hmm = student()
    before = {k: v.clone() for k, v in hmm.parameters().items()}
    valid = TokenWindows(windows[:].flatten()[:60].numpy(), length)
    with pytest.raises(DataError, match=rf"held-out windows have length {length}, the model "
                       rf"needs T={T}"):
        train(hmm, windows, EMConfig(epochs=1), progress=False, valid=valid)
    assert all(torch.equal(v, before[k]) for k, v in hmm.parameters().items())


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"step_size": 0.0},
                                    {"step_size": 1.5}, {"epochs": -1},
                                    {"phase2_step_size": 0.0}, {"final_full_batch": -1},
                                    {"phase2_epochs": 1, "final_step_size": 0.1}])
def test_bad_train_config(kwargs):
    with pytest.raises(DataError):
        EMConfig(**kwargs)


def test_epoch_plan_and_config_round_trip():
    config = EMConfig(epochs=2, step_size=0.3, phase2_epochs=1, phase2_step_size=0.1,
                      final_full_batch=2, batch_size=7)
    assert config.epoch_plan() == [(0.3, False), (0.3, False), (0.1, False), (1.0, True),
                                   (1.0, True)]
    assert EMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_checkpoint_of_the_earlier_phases_form_reads_as_its_schedule():
    """Checkpoints written before the one EMConfig record ``train_config`` as phases: they read
    as the schedule they describe (runs in progress resume), and one no schedule can express
    is refused."""
    old = {"phases": [{"epochs": 2, "step_size": 0.3, "full_batch": False},
                      {"epochs": 1, "step_size": 0.1, "full_batch": False},
                      {"epochs": 1, "step_size": 1.0, "full_batch": True}],
           "batch_size": 16384, "pseudocount": 1e-4, "full_batch": False, "seed": 0,
           "checkpoint_every": 25, "keep_checkpoints": 1}
    got = EMConfig.from_dict(old, implied=train_module.IMPLIED)
    assert got == EMConfig(epochs=2, step_size=0.3, phase2_epochs=1, phase2_step_size=0.1,
                           final_full_batch=1, batch_size=16384, pseudocount=1e-4,
                           checkpoint_every=25, keep_checkpoints=1, dtype="float32")
    odd = {**old, "phases": [{"epochs": 1, "step_size": 1.0, "full_batch": True},
                             {"epochs": 1, "step_size": 0.3, "full_batch": False}]}
    with pytest.raises(DataError, match="not a schedule"):
        EMConfig.from_dict(odd)


def test_finished_state_trains_no_more(windows, tmp_path):
    hmm = student()
    before = {k: v.clone() for k, v in hmm.parameters().items()}
    checkpoints = EMCheckpoints(tmp_path)
    checkpoints.progress = Progress(epoch=1)  # as resume() sets it after the last epoch
    train(hmm, windows, EMConfig(epochs=1, step_size=0.5, final_full_batch=0),
          checkpoints=checkpoints, progress=False)
    for name, value in hmm.parameters().items():
        assert torch.equal(value, before[name])


def test_a_final_full_batch_phase_is_one_exact_m_step_per_epoch(windows):
    """Mini-batch phases then one full-batch epoch (final_full_batch=1) equal training the
    mini-batch phases, then one classic EM step from the counts of every window (with the
    accumulator directly)."""
    from hmmlvd.hmm import CountAccumulator, expected_counts, maximize

    config = EMConfig(epochs=1, step_size=0.6, final_full_batch=1, batch_size=60, seed=3)
    assert [full for _, full in config.epoch_plan()] == [False, True]
    assert config.any_full_batch
    hmm = student()
    state = train(hmm, windows, config, progress=False)
    assert [row["full_batch"] for row in state.history] == [False, True]
    assert state.step == windows.num_batches(60) + 1

    reference = student()
    train(reference, windows, EMConfig(epochs=1, step_size=0.6, final_full_batch=0,
                                       batch_size=60, seed=3), progress=False)
    accumulator = CountAccumulator(reference)
    for x in windows.batches(25):
        accumulator.add(expected_counts(reference, x))
    maximize(reference, accumulator.total(), 1.0, config.pseudocount)
    assert_same_parameters(hmm, reference)


def test_two_phase_schedule_with_final_full_batch():
    config = EMConfig(epochs=2, step_size=0.3, phase2_epochs=1, phase2_step_size=0.1,
                      final_full_batch=1)
    assert config.epoch_plan() == [(0.3, False), (0.3, False), (0.1, False), (1.0, True)]
    annealed = EMConfig(epochs=2, step_size=0.5, final_step_size=0.1, final_full_batch=0)
    assert [a.at(0, 1) for a, _ in annealed.epoch_plan()] == pytest.approx([0.5, 0.1])


def edited_checkpoint(out, **fields) -> None:
    """Write one HMM checkpoint into ``out``, then overwrite ``fields`` of its
    checkpoint.json by hand (a None value deletes the key inside ``em_config`` named
    ``em_config.<key>``)."""
    config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=50)
    folder = save_hmm_checkpoint(student(), config, Progress(step=3), out)
    path = folder / "checkpoint.json"
    raw = json.loads(path.read_text())
    for key, value in fields.items():
        if key.startswith("em_config."):
            del raw["em_config"][key.split(".", 1)[1]]
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("fields, message", [
    ({"kind": "circuit"}, r"holds a 'circuit', not an HMM: resume it with the command that "
                          r"made it$"),
    ({"em_config": None}, r"checkpoints/ckpt-\d{8} records no EM config$")])
def test_load_checkpoint_refuses_what_is_not_an_hmm_run(tmp_path, fields, message):
    edited_checkpoint(tmp_path, **fields)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_load_checkpoint_reads_a_config_from_before_the_dtype_setting(tmp_path, windows):
    """A checkpoint whose EM config has no ``dtype`` (written before that setting existed)
    ran its E-step in float32: that is the config it resumes with, and training goes on."""
    edited_checkpoint(tmp_path, **{"em_config.dtype": None})
    hmm, config, checkpoints = load_checkpoint(tmp_path)
    assert config.dtype == "float32" and config.batch_size == 50
    train(hmm, windows, config, progress=False, checkpoints=checkpoints)


def test_load_checkpoint_refuses_other_training_data(tmp_path):
    """``trained_on`` is compared with the checkpoint's record: another command is refused
    with the command to resume with; the same record (or None: not checked) loads."""
    checkpoints = EMCheckpoints(tmp_path, trained_on={"command": "train"})
    checkpoints.begin(EMConfig(batch_size=50))
    checkpoints.watch(student())
    checkpoints.save(Progress(step=1), None)
    with pytest.raises(CheckpointError, match=r"was made by `hmmlvd train`, not `hmmlvd lvd`: "
                       r"resume it with `hmmlvd train \.\.\. --resume`"):
        load_checkpoint(tmp_path, trained_on={"command": "lvd"})
    assert load_checkpoint(tmp_path, trained_on={"command": "train"})[2].progress.step == 1
    assert load_checkpoint(tmp_path)[2].trained_on == {"command": "train"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_history_rows_record_each_epoch_with_its_time_and_e_step_dtype(windows, held_out, dtype):
    """One row per epoch with the fields results.json and scripts/lvd_vs_random.py read: the
    epoch (from 1), its step size and kind, the mean train log-likelihood per token, its wall
    time in seconds, the E-step's compute dtype and the held-out score."""
    hmm = student()
    config = EMConfig(epochs=2, step_size=0.5, final_full_batch=1, batch_size=200, seed=5,
                      dtype=dtype)
    history = train(hmm, windows, config, progress=False, valid=held_out).history
    assert [sorted(row) for row in history] == [sorted(
        ["epoch", "step_size", "full_batch", "train_ll_per_token", "seconds", "dtype",
         "valid_ll_per_window"])] * 3
    assert [(r["epoch"], r["step_size"], r["full_batch"], r["dtype"]) for r in history] == \
        [(1, 0.5, False, dtype), (2, 0.5, False, dtype), (3, 1.0, True, dtype)]
    assert all(isinstance(r["seconds"], float) and r["seconds"] > 0 for r in history)
    assert all(-math.log(V) - 1 < r["train_ll_per_token"] < 0 for r in history)


@pytest.mark.parametrize("full_batch", [False, True])
def test_the_configured_dtype_reaches_every_e_step(windows, full_batch):
    """dtype="bfloat16" changes the E-steps of mini-batch and of full-batch epochs (their
    rounding moves the parameters off the float32 run's), while staying close to it: a dtype
    that did not reach the E-step would give the float32 parameters exactly."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        hmm = student()
        config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=200,
                          full_batch=full_batch, seed=5, dtype=dtype)
        train(hmm, windows, config, progress=False)
        runs[dtype] = hmm.parameters()
    for name, value in runs["float32"].items():
        other = runs["bfloat16"][name]
        assert not torch.equal(other, value), name
        torch.testing.assert_close(other, value, rtol=0.05, atol=2e-3, msg=name)


@pytest.mark.parametrize("per", ["batch", "data"])
def test_training_equals_em_steps_taken_by_hand(monkeypatch, windows, per):
    """train() = plain EM written out: each mini-batch epoch visits the batches of its
    seeded shuffle, one dense E-step and M-step each (the pseudocount scaled by B/N when it is
    per data); the full-batch epoch sums the counts of all windows (here in chunks of 50
    windows) and takes one M-step with step size 1, reporting their mean log-likelihood per
    token."""
    monkeypatch.setattr(train_module, "chunk_windows", lambda *sizes: 50)
    config = EMConfig(epochs=2, step_size=0.5, final_full_batch=1, batch_size=100, seed=5,
                      pseudocount=0.01, pseudocount_per=per)
    hmm = student()
    history = train(hmm, windows, config, progress=False).history
    reference, n = student(), len(windows)
    for epoch, (step, full) in enumerate(config.epoch_plan()):
        if full:
            everything = windows[:]
            counts = expected_counts(reference, everything)
            want_ll = counts.log_likelihood / everything.numel()
            maximize(reference, counts, 1.0, config.pseudocount)
        else:
            c = config.pseudocount * (100 / n if per == "data" else 1)
            for x in windows.batches(100, shuffle=True, seed=epoch_seed(5, epoch)):
                maximize(reference, expected_counts(reference, x), step, c)
    assert_same_parameters(hmm, reference)
    assert history[-1]["full_batch"]
    assert history[-1]["train_ll_per_token"] == pytest.approx(want_ll, rel=1e-6)


@pytest.mark.parametrize("config", [
    EMConfig(epochs=1, final_full_batch=1, batch_size=40, dtype="bfloat16"),
    EMConfig(epochs=0, final_full_batch=2, batch_size=40, dtype="float32"),
    EMConfig(epochs=2, final_full_batch=0, batch_size=40, dtype="float32"),
], ids=["both-kinds-bf16", "full-batch-only", "mini-batch-only"])
def test_training_checks_memory_for_the_epochs_and_dtype_it_runs(monkeypatch, windows, config):
    """Before the first batch, train() refuses a run whose EM needs more than the device has
    besides the loaded parameters, estimated for the kinds of epoch the schedule has (full-batch
    count sums, the scaled table of mini-batch epochs) in the E-step's dtype; a run that fits
    exactly trains."""
    monkeypatch.delenv(device_memory.SKIP_ENV, raising=False)
    estimate = memory.training_estimate(student().config, config.batch_size,
                                        config.any_full_batch, getattr(torch, config.dtype),
                                        config.any_mini_batch)
    needed = estimate.total - estimate.parameters
    monkeypatch.setattr(device_memory, "available_bytes", lambda device: needed - 1)
    with pytest.raises(InsufficientMemoryError):
        train(student(), windows, config, progress=False)
    monkeypatch.setattr(device_memory, "available_bytes", lambda device: needed)
    assert len(train(student(), windows, config, progress=False).history) == \
        config.epochs + config.final_full_batch


def test_training_shows_a_progress_bar_unless_told_not_to(windows, capsys):
    config = EMConfig(epochs=1, final_full_batch=0, batch_size=40)
    train(student(), windows, config)
    assert "epoch 1/1" in capsys.readouterr().err
    train(student(), windows, config, progress=False)
    assert "epoch" not in capsys.readouterr().err
