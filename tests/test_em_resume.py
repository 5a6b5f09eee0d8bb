"""Circuit EM checkpoints (hmmlvd.em.checkpoints): a run stopped anywhere and resumed ends with the
parameters of the run that was never stopped, for circuits and patch circuits, through every
phase (mini-batch epochs with early stopping, then full-batch epochs)."""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.em.checkpoints import EMCheckpoints, check_resumed
from hmmlvd.em.stop import TrainingInterrupted
from hmmlvd.pc import Circuit, EMConfig, poon_domingos

SETTINGS = {"model": "pd", "size": 2, "pseudocount": 0.1}
CONFIG = EMConfig(epochs=4, batch_size=7, step_size=0.5, pseudocount=0.1, patience=2,
                  final_full_batch=6, seed=3)


def data_and_valid() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, 4, (30, 4), generator=gen), torch.randint(0, 4, (9, 4), generator=gen)


def fresh() -> Circuit:
    return Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical", num_categories=4,
                   seed=5)


class StopAt:
    """A stop_signal that answers ``signum`` from its ``at``-th question on."""

    def __init__(self, at: int, signum: int = signal.SIGINT):
        self.at, self.signum, self.asked = at, signum, 0

    def __call__(self) -> int:
        self.asked += 1
        return self.signum if self.asked >= self.at else 0


def train_with_stops(out, stops: list[int], build=fresh, load=Circuit.from_pretrained,
                     data: tuple | None = None, config: EMConfig = CONFIG):
    """Train ``build()`` in ``out`` on ``data`` (train, valid), stopped at each of ``stops``
    (questions into each run) and resumed from ``load(folder)``; returns the final model and
    how many runs were interrupted."""
    train, valid = data or data_and_valid()
    interrupted = 0
    model, checkpoints = build(), EMCheckpoints(out, SETTINGS)
    for run in range(len(stops) + 1):
        if run:
            checkpoints = EMCheckpoints(out, SETTINGS)
            model = load(checkpoints.resume())
        checkpoints.stop_signal = StopAt(stops[run]) if run < len(stops) else (lambda: 0)
        try:
            model.fit(train, config, valid=valid, progress=False, checkpoints=checkpoints)
            return model, interrupted
        except TrainingInterrupted:
            interrupted += 1
    raise AssertionError("the last run was not allowed to finish")


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_checkpoints_do_not_change_training(tmp_path):
    data, valid = data_and_valid()
    plain = fresh().fit(data, CONFIG, valid=valid, progress=False)
    saved = fresh().fit(data, CONFIG, valid=valid, progress=False,
                        checkpoints=EMCheckpoints(tmp_path, SETTINGS))
    assert_same_parameters(plain, saved)
    assert saved.valid_history == plain.valid_history
    assert len(plain.valid_history) > 4  # both phases ran (the test covers them)


def test_a_run_stopped_anywhere_resumes_to_the_same_model(tmp_path):
    """Every stop point of the whole run (each batch of each epoch, both phases, the phase
    boundaries): stopped there once, resumed, the result is the uninterrupted one."""
    data, valid = data_and_valid()
    reference = fresh().fit(data, CONFIG, valid=valid, progress=False)
    counter = StopAt(10**9)
    fresh().fit(data, CONFIG, valid=valid, progress=False,
                checkpoints=EMCheckpoints(tmp_path / "count", SETTINGS, counter))
    assert counter.asked > 20
    for at in range(1, counter.asked + 1):
        model, interrupted = train_with_stops(tmp_path / f"stop{at}", [at])
        assert interrupted == 1
        assert_same_parameters(model, reference)
        assert model.valid_history == reference.valid_history, at
        # the epoch stopped part-way reports the mean over all its batches, as uninterrupted
        assert model.fit_history == pytest.approx(reference.fit_history, rel=1e-12), at


def test_a_run_stopped_again_and_again_still_ends_the_same(tmp_path):
    data, valid = data_and_valid()
    reference = fresh().fit(data, CONFIG, valid=valid, progress=False)
    model, interrupted = train_with_stops(tmp_path, [2] * 12)
    assert interrupted == 12
    assert_same_parameters(model, reference)
    assert model.valid_history == reference.valid_history
    assert model.fit_history == pytest.approx(reference.fit_history, rel=1e-12)


def test_a_stop_says_where_and_how_to_resume(tmp_path):
    data, valid = data_and_valid()
    checkpoints = EMCheckpoints(tmp_path, SETTINGS, StopAt(12, signal.SIGTERM))
    with pytest.raises(TrainingInterrupted, match=r"by SIGTERM.*--resume") as info:
        fresh().fit(data, CONFIG, valid=valid, progress=False, checkpoints=checkpoints)
    assert info.value.signal == signal.SIGTERM
    # a save before the first batch, after each of the first epochs, at the stop: the
    # newest keep_checkpoints (2) are left, `latest` naming the newest
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["ckpt-00000003", "ckpt-00000004", "latest"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "ckpt-00000004\n"


def test_resume_refuses_other_settings_naming_the_flag(tmp_path):
    data, valid = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, CONFIG, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(tmp_path, SETTINGS, StopAt(4)))
    with pytest.raises(CheckpointError) as info:
        EMCheckpoints(tmp_path, {**SETTINGS, "pseudocount": 0.2}).resume()
    assert str(info.value) == (
        f"--resume with --pseudocount 0.2, but the run in {tmp_path} was started with 0.1: "
        "resume with the same settings, or start a new run in another --out")
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        EMCheckpoints(tmp_path / "empty", SETTINGS).resume()


def test_a_damaged_checkpoint_is_named(tmp_path):
    data, valid = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, CONFIG, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(tmp_path, SETTINGS, StopAt(12)))
    checkpoints = EMCheckpoints(tmp_path, SETTINGS)
    folder = checkpoints.latest()
    state = folder / "checkpoint.json"
    raw = json.loads(state.read_text())
    state.write_text(json.dumps({**raw, "progress": {**raw["progress"], "epoch": -1}}))
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is damaged"):
        checkpoints.resume()
    (tmp_path / "checkpoints" / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        checkpoints.resume()
    pointer = tmp_path / "checkpoints" / "latest"
    pointer.write_bytes(b"\xff\xfeckpt-00000001\n")  # not UTF-8
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume()
    assert str(info.value).startswith(f"{pointer} is unreadable: ")
    pointer.write_text("ckpt-00000099\n")  # a checkpoint name, but no such folder
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume()
    missing = tmp_path / "checkpoints" / "ckpt-00000099"
    assert str(info.value) == f"checkpoint {missing} has no checkpoint.json"


def test_patch_circuit_resumes_to_the_same_model(tmp_path):
    """Stage (c) of image LVD on a tiny patch circuit: stopped mid-epoch and in the full-batch
    phase, resumed, it ends where the uninterrupted run does."""
    from hmmlvd.image.patch_circuit import PatchCircuit
    from hmmlvd.pc.structures import learn_hclt

    rng = np.random.default_rng(0)
    images = rng.integers(0, 4, (40, 4, 4, 1))
    flat = torch.as_tensor(images.reshape(40, -1))
    patches = images.reshape(40, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(40, 4, 4)
    subs = [learn_hclt(patches[:, i], 4, 4) for i in range(4) for _ in range(2)]
    top = learn_hclt(rng.integers(0, 2, (40, 4)), 2)

    def build() -> PatchCircuit:
        return PatchCircuit((4, 4, 1), 2, subs, top, 2, 2, 2, num_categories=4, seed=1)

    config = EMConfig(epochs=2, batch_size=9, step_size=0.5, pseudocount=0.1, patience=1,
                      final_full_batch=2)
    valid = flat[:10]
    reference = build().fit(flat, config, valid=valid, progress=False)
    model, interrupted = train_with_stops(tmp_path, [3, 9, 2], build,
                                          PatchCircuit.from_pretrained, (flat, valid), config)
    assert interrupted == 3
    assert_same_parameters(model, reference)
    assert model.valid_history == reference.valid_history
    assert model.fit_history == pytest.approx(reference.fit_history, rel=1e-12)


def test_a_setting_added_later_counts_as_its_default_in_an_older_checkpoint(tmp_path):
    """A checkpoint written before a setting existed resumes when the setting is at the value
    that stood for the old behaviour, and is refused with any other value."""
    data, valid = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, CONFIG, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(tmp_path, SETTINGS, StopAt(4)))
    newer = {**SETTINGS, "pseudocount_per": "batch"}
    EMCheckpoints(tmp_path, newer, defaults={"pseudocount_per": "batch"}).resume()
    with pytest.raises(CheckpointError, match="--pseudocount-per 'data'"):
        EMCheckpoints(tmp_path, {**SETTINGS, "pseudocount_per": "data"},
                      defaults={"pseudocount_per": "batch"}).resume()
    with pytest.raises(CheckpointError, match="--pseudocount-per 'batch'"):
        EMCheckpoints(tmp_path, newer).resume()  # without the default: refused


# ----- held-out data on resume, damaged early-stopping state, stop messages, clean-up ---------

NO_PATIENCE = dataclasses.replace(CONFIG, patience=0)


def stopped(out, at: int, valid: torch.Tensor | None, config: EMConfig = NO_PATIENCE) -> None:
    """A run in ``out`` stopped at stop question ``at`` (checkpoint saved)."""
    data, _ = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, config, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(out, SETTINGS, StopAt(at)))


def resumed(out) -> tuple[Circuit, EMCheckpoints]:
    checkpoints = EMCheckpoints(out, SETTINGS)
    return Circuit.from_pretrained(checkpoints.resume()), checkpoints


@pytest.mark.parametrize("change", ["added", "dropped"])
def test_held_out_data_added_or_dropped_on_resume(tmp_path, change):
    """Patience 0: held-out data only picks the best epoch of each phase. Added on resume
    before any epoch was scored (stopped in epoch 1), or dropped before the first phase ended
    (stopped in epoch 2), the run ends as an uninterrupted run with the held-out data it
    ended with."""
    data, valid = data_and_valid()
    before, after = (None, valid) if change == "added" else (valid, None)
    stopped(tmp_path, 3 if change == "added" else 9, before)
    model, checkpoints = resumed(tmp_path)
    model.fit(data, NO_PATIENCE, valid=after, progress=False, checkpoints=checkpoints)
    reference = fresh().fit(data, NO_PATIENCE, valid=after, progress=False)
    assert_same_parameters(model, reference)
    assert model.fit_history == pytest.approx(reference.fit_history, rel=1e-12)


def test_a_damaged_early_stopping_state_is_one_line_naming_the_folder(tmp_path):
    data, valid = data_and_valid()
    stopped(tmp_path, 13, valid)  # in epoch 3: two epochs scored, the best in best/
    folder = EMCheckpoints(tmp_path, SETTINGS).latest()
    state = folder / "checkpoint.json"
    raw = json.loads(state.read_text())
    early = raw["early"]
    assert len(early["scores"]) == 2 and early["best_epoch"] >= 1
    assert (folder / "best").is_dir()
    for change, problem in [({"best_epoch": 3}, "does not fit"),  # beyond the 2 scores
                            ({"best_epoch": 0, "since": 3}, "does not fit"),
                            ({"best_epoch": "1"}, "best_epoch must be an integer"),
                            ({"since": -1}, "since must be >= 0")]:
        state.write_text(json.dumps({**raw, "early": {**early, **change}}))
        model, checkpoints = resumed(tmp_path)
        with pytest.raises(CheckpointError) as info:
            model.fit(data, NO_PATIENCE, valid=valid, progress=False, checkpoints=checkpoints)
        message = str(info.value)
        assert f"early-stopping state in {folder} is damaged" in message, change
        assert problem in message and "\n" not in message, (change, message)


def test_a_stop_names_the_phase_and_epoch_it_stopped_in(tmp_path):
    """Questions to stop_signal, patience 0: one at the start of each phase, one after each of
    the 5 batches of every epoch (4 mini-batch epochs, then the full-batch ones). The 13th is
    after batch 2 of epoch 3; the 28th after the first batch of full-batch epoch 2 (a
    full-batch epoch restarts, batch 0). Epochs and phases count from 1 in the message."""
    data, valid = data_and_valid()
    for at, where in [(13, "at epoch 3, batch 2;"), (28, "at phase 2, epoch 2, batch 0;")]:
        with pytest.raises(TrainingInterrupted) as info:
            fresh().fit(data, NO_PATIENCE, valid=valid, progress=False,
                        checkpoints=EMCheckpoints(tmp_path / str(at), SETTINGS, StopAt(at)))
        assert f"training interrupted {where} checkpoint saved in" in \
            str(info.value), str(info.value)


def test_a_refused_resume_says_how_to_go_on(tmp_path):
    stopped(tmp_path, 4, None)
    with pytest.raises(CheckpointError) as info:
        EMCheckpoints(tmp_path, {**SETTINGS, "size": 3}).resume()
    message = str(info.value)
    assert message.startswith("--resume with --size 3")
    assert message.endswith("resume with the same settings, or start a new run in another --out")


def test_check_resumed_needs_checkpoints_read_back(tmp_path):
    """A model resumed from checkpoints is trained on with them: without them (None, or
    checkpoints never resumed) a one-line DataError says to call EMCheckpoints.resume()."""
    for missing in (None, EMCheckpoints(tmp_path, SETTINGS)):
        with pytest.raises(DataError, match=r"needs the checkpoints.*EMCheckpoints\.resume\(\)"):
            check_resumed(missing)
    stopped(tmp_path, 4, None)
    _, checkpoints = resumed(tmp_path)
    assert check_resumed(checkpoints) is checkpoints


def test_remove_deletes_the_checkpoints_and_is_a_no_op_without_any(tmp_path):
    data, valid = data_and_valid()
    checkpoints = EMCheckpoints(tmp_path / "run", SETTINGS)
    fresh().fit(data, NO_PATIENCE, valid=valid, progress=False, checkpoints=checkpoints)
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
    checkpoints.remove()
    assert not (tmp_path / "run" / "checkpoints").exists()
    checkpoints.remove()  # twice: nothing left, no error
    # an EM of no epochs writes no checkpoint: removing them after it is a no-op
    none = EMCheckpoints(tmp_path / "none", SETTINGS)
    fresh().fit(data, EMConfig(epochs=0, final_full_batch=0, step_size=0.5), progress=False,
                checkpoints=none)
    assert not (tmp_path / "none" / "checkpoints").exists()
    none.remove()


# ----- damaged progress records ----------------------------------------------------------------
WRONG_TYPE_FIELDS = ["settings", "trained_on", "record", "early", "em_config", "run_id", "kind"]


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda raw: [raw], "TypeError: a JSON object is needed, got list"),
    (lambda raw: {**raw, "progress": [1]}, "TypeError: progress must be an object, got list"),
    (lambda raw: {**raw, "progress": {**raw["progress"], "epoch": True}},
     "ValueError: epoch must be an integer >= 0, got True"),
    (lambda raw: {**raw, "progress": {**raw["progress"], "step": "3"}},
     "ValueError: step must be an integer >= 0, got '3'"),
    (lambda raw: {**raw, "progress": {**raw["progress"], "phase_done": 1}},
     "ValueError: phase_done must be true or false, got 1"),
    (lambda raw: {**raw, "progress": {**raw["progress"], "history": {}}},
     "TypeError: history must be a list, got dict"),
    *[(lambda raw, field=field: {**raw, field: 5 if isinstance(raw[field], str) else [1]},
       "TypeError: settings, trained_on, record, early and em_config must be objects, run_id "
       "and kind strings") for field in WRONG_TYPE_FIELDS],
], ids=["not an object", "progress a list", "epoch a bool", "step a string",
        "phase_done a number", "history an object",
        *(f"{field} of the wrong type" for field in WRONG_TYPE_FIELDS)])
def test_a_damaged_progress_record_is_named_with_its_field(tmp_path, edit, reason):
    """A checkpoint.json edited by hand (or by another tool) is refused in one line naming
    the file, the field and what it holds, instead of resuming from a wrong position; each of
    its fields of the wrong type alone (a list for an object, a number for a string) too."""
    data, valid = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, CONFIG, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(tmp_path, SETTINGS, StopAt(4)))
    checkpoints = EMCheckpoints(tmp_path, SETTINGS)
    state = checkpoints.latest() / "checkpoint.json"
    state.write_text(json.dumps(edit(json.loads(state.read_text()))))
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume()
    assert str(info.value) == f"{state} is damaged or not from hmmlvd: {reason}"



def test_a_checkpoint_that_cannot_be_written_leaves_no_folder_and_latest_as_it_was(
        tmp_path, monkeypatch):
    """Disk full while writing the third checkpoint's checkpoint.json (its model files are
    written): one WriteError naming that folder, the folder removed, `latest` still naming the
    second, which resumes."""
    import errno

    from hmmlvd.core.errors import WriteError
    from hmmlvd.em import checkpoints as checkpoints_module

    real, calls = checkpoints_module.atomic_write_json, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoints_module, "atomic_write_json", fill_up)
    data, valid = data_and_valid()
    with pytest.raises(WriteError) as info:
        fresh().fit(data, dataclasses.replace(CONFIG, checkpoint_every=1), valid=valid,
                    progress=False, checkpoints=EMCheckpoints(tmp_path, SETTINGS))
    root = tmp_path / "checkpoints"
    assert str(root / "ckpt-00000003") in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-00000001", "ckpt-00000002",
                                                      "latest"]
    monkeypatch.setattr(checkpoints_module, "atomic_write_json", real)
    checkpoints = EMCheckpoints(tmp_path, SETTINGS)
    assert checkpoints.resume() == root / "ckpt-00000002"


def test_rotation_leaves_folders_of_other_names_alone(tmp_path):
    """A copy of a checkpoint kept under another name inside checkpoints/ (a user's backup,
    with this run's id) is neither rotated away nor read as one of the run's checkpoints; a
    folder with a checkpoint's name whose record is not an object counts as another run's."""
    import shutil

    data, valid = data_and_valid()
    with pytest.raises(TrainingInterrupted):
        fresh().fit(data, CONFIG, valid=valid, progress=False,
                    checkpoints=EMCheckpoints(tmp_path, SETTINGS, StopAt(4)))
    root = tmp_path / "checkpoints"
    backup = root / "backup"
    shutil.copytree(EMCheckpoints(tmp_path, SETTINGS).latest(), backup)
    foreign = root / "ckpt-00000000"  # a checkpoint's name, its record not an object
    foreign.mkdir()
    (foreign / "checkpoint.json").write_text("[1]")
    checkpoints = EMCheckpoints(tmp_path, SETTINGS)
    model = Circuit.from_pretrained(checkpoints.resume())
    model.fit(data, CONFIG, valid=valid, progress=False, checkpoints=checkpoints)
    assert backup.is_dir() and (backup / "checkpoint.json").is_file()
    assert (foreign / "checkpoint.json").read_text() == "[1]"  # another run's: left alone
    assert checkpoints.latest().name.startswith("ckpt-")
