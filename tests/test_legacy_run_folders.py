"""Run folders written before the one run-folder format (hmmlvd.em.checkpoints) still resume:
an HMM run's ``step-NNNNNNNN/train_state.json`` (its EM config as ``em_config``, or the
earlier ``train_config`` phases form) and a circuit run's ``em-NNNNNNNN/em_state.json``. Each
old folder is written here by hand, key by key as the earlier writers wrote them (not by the
new writer); resumed by the new code, the run ends with the parameters of a run that was never
stopped. Unknown or newer formats are refused in one line naming the folder and version."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch

from hmmlvd.core import outdir, persist
from hmmlvd.core.errors import CheckpointError
from hmmlvd.data import TokenWindows
from hmmlvd.em import checkpoints as em_checkpoints
from hmmlvd.em.checkpoints import EMCheckpoints, read_checkpoint
from hmmlvd.em.config import EMConfig
from hmmlvd.em.early import EarlyStopping
from hmmlvd.hmm import HMM, load_checkpoint, train
from hmmlvd.pc import Circuit, poon_domingos

train_module = importlib.import_module("hmmlvd.hmm.train")
pc_em = importlib.import_module("hmmlvd.pc.em")

H, V, T = 4, 8, 5
CRASH_AT = 4  # M-steps done when the old run stopped: mid-way through epoch 1 (10 batches)
#: The run's schedule: epoch 1 at 0.7, epoch 2 at 0.4, mini-batches of 60 windows. It is one
#: the earlier ``train_config`` phases form can express, in float32 (what that form implies).
HMM_CONFIG = EMConfig(epochs=1, step_size=0.7, phase2_epochs=1, phase2_step_size=0.4,
                      final_full_batch=0, batch_size=60, seed=5, checkpoint_every=4,
                      keep_checkpoints=2, dtype="float32")
TRAIN_CONFIG = {"phases": [{"epochs": 1, "step_size": 0.7, "full_batch": False},
                           {"epochs": 1, "step_size": 0.4, "full_batch": False}],
                "batch_size": 60, "pseudocount": HMM_CONFIG.pseudocount, "full_batch": False,
                "seed": 5, "checkpoint_every": 4, "keep_checkpoints": 2}


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def windows() -> TokenWindows:
    from conftest import peaked_hmm

    teacher = peaked_hmm(H, V, T, seed=91, sharpness=2.5)
    stream = teacher.sample(120, generator=torch.Generator().manual_seed(92)).flatten()
    return TokenWindows(stream.numpy(), T)


def student() -> HMM:
    return HMM(H, V, T, seed=93)


def stopped_hmm(windows: TokenWindows, monkeypatch) -> tuple[HMM, float, float]:
    """The model of a run stopped after CRASH_AT M-steps (in memory, nothing saved), and the
    summed log-likelihood and tokens of those batches."""
    real, seen = train_module.expected_counts, {"n": 0, "total": 0.0, "units": 0.0}

    def counting(hmm, x, *args, **kwargs):
        if seen["n"] == CRASH_AT:
            raise Crash
        seen["n"] += 1
        counts = real(hmm, x, *args, **kwargs)
        seen["total"] += counts.log_likelihood
        seen["units"] += x.numel()
        return counts

    monkeypatch.setattr(train_module, "expected_counts", counting)
    hmm = student()
    with pytest.raises(Crash):
        train(hmm, windows, HMM_CONFIG, progress=False)
    monkeypatch.undo()
    return hmm, seen["total"], seen["units"]


@pytest.mark.parametrize("form", ["em_config", "train_config"])
def test_an_old_hmm_step_folder_resumes_to_the_uninterrupted_model(tmp_path, windows,
                                                                   monkeypatch, form):
    reference = student()
    want = train(reference, windows, HMM_CONFIG, progress=False)
    hmm, total, units = stopped_hmm(windows, monkeypatch)
    out = tmp_path / "run"
    folder = out / "checkpoints" / f"step-{CRASH_AT:08d}"
    hmm.save_pretrained(folder)  # the model files: the format save_pretrained always wrote
    if form == "em_config":  # as hmmlvd.hmm.train.save_checkpoint wrote it before this format
        state = {"em_config": HMM_CONFIG.to_dict(), "epoch": 0, "batch": CRASH_AT,
                 "step": CRASH_AT, "epoch_total": total, "epoch_units": units,
                 "history": [], "run_id": "0123456789abcdef0123456789abcdef",
                 "trained_on": {}, "early": {}}
    else:  # an earlier one still: the phases form, no running totals, trained_on or early
        state = {"train_config": TRAIN_CONFIG, "epoch": 0, "batch": CRASH_AT,
                 "step": CRASH_AT, "history": [], "run_id": "0123456789abcdef0123456789abcdef"}
    (folder / "train_state.json").write_text(json.dumps(state, indent=2))
    (out / "checkpoints" / "latest").write_text(folder.name + "\n")
    assert outdir.run_in_folder(out) == outdir.FolderRun(outdir.TEXT_RUN, finished=False)

    resumed, config, checkpoints = load_checkpoint(out)
    assert config == HMM_CONFIG
    assert (checkpoints.progress.epoch, checkpoints.progress.batch) == (0, CRASH_AT)
    got = train(resumed, windows, config, progress=False, checkpoints=checkpoints)
    for name, value in reference.parameters().items():
        torch.testing.assert_close(resumed.parameters()[name], value, rtol=1e-6, atol=1e-7,
                                   msg=name)
    assert (got.epoch, got.step) == (want.epoch, want.step)
    if form == "em_config":  # the running totals came back: the same epoch means (to the
        # float32 rounding of the parameters, which the resumed run reads materialised while
        # the uninterrupted one kept its scaled emission table; without the totals epoch 1's
        # mean would cover only the batches after the resume, off by about 1e-2)
        assert [r["train_ll_per_token"] for r in got.history] == pytest.approx(
            [r["train_ll_per_token"] for r in want.history], rel=1e-6)
    # the run goes on in the new format, the same run: its old folder was rotated away
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    # (saves after steps 8, 10 (epoch end), 12, 16, 20 (epoch end); keep_checkpoints 2)
    assert names == ["ckpt-00000004", "ckpt-00000005", "latest"], names
    last = read_checkpoint(out / "checkpoints" / "ckpt-00000005")
    assert last.run_id == "0123456789abcdef0123456789abcdef" and last.kind == "hmm"
    assert last.format == em_checkpoints.FORMAT


SETTINGS = {"model": "pd", "size": 2, "pseudocount": 0.1}
CIRCUIT_CONFIG = EMConfig(epochs=2, batch_size=7, step_size=0.5, pseudocount=0.1,
                          final_full_batch=1, seed=3)
CIRCUIT_STOP = 3  # of the first epoch's 5 batches


def circuit_data() -> torch.Tensor:
    return torch.randint(0, 4, (30, 4), generator=torch.Generator().manual_seed(3))


def circuit() -> Circuit:
    return Circuit(poon_domingos(2, 2, delta=1), 2, input="categorical", num_categories=4,
                   seed=5)


def test_an_old_circuit_em_folder_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    data = circuit_data()
    reference = circuit().fit(data, CIRCUIT_CONFIG, progress=False)
    real, seen = pc_em.accumulate_counts, {"n": 0, "total": 0.0, "units": 0}

    def counting(model, x, missing=None):
        if seen["n"] == CIRCUIT_STOP:
            raise Crash
        seen["n"] += 1
        total = real(model, x, missing)
        seen["total"] += total
        seen["units"] += len(x)
        return total

    monkeypatch.setattr(pc_em, "accumulate_counts", counting)
    stopped = circuit()
    with pytest.raises(Crash):
        stopped.fit(data, CIRCUIT_CONFIG, progress=False)
    monkeypatch.undo()
    out = tmp_path / "run"
    folder = out / "checkpoints" / "em-00000002"
    stopped.save_pretrained(folder)
    # as hmmlvd.pc.resume.EMCheckpoints.save wrote it before this format
    (folder / "em_state.json").write_text(json.dumps({
        "settings": SETTINGS, "record": {"structure_seconds": 0.25}, "trained_on": {},
        "progress": {"phase": 0, "epoch": 0, "batch": CIRCUIT_STOP, "step": CIRCUIT_STOP,
                     "phase_done": False, "history": [], "epoch_total": seen["total"],
                     "epoch_units": seen["units"]},
        "early": None, "seconds": 12.5}, indent=2))
    (out / "checkpoints" / "latest").write_text("em-00000002\n")
    assert outdir.run_in_folder(out) == outdir.FolderRun(outdir.IMAGE_RUN, finished=False)
    saved = read_checkpoint(folder)
    assert (saved.format, saved.kind, saved.run_id, saved.folder) == (1, "circuit", "", folder)

    with pytest.raises(CheckpointError, match=r"--size 3"):
        EMCheckpoints(out, {**SETTINGS, "size": 3}).resume()
    checkpoints = EMCheckpoints(out, SETTINGS)
    model = Circuit.from_pretrained(checkpoints.resume())
    assert checkpoints.record == {"structure_seconds": 0.25}
    assert checkpoints.seconds_before == 12.5
    model.fit(data, CIRCUIT_CONFIG, progress=False, checkpoints=checkpoints)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(),
                                 strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    assert model.fit_history == pytest.approx(reference.fit_history, rel=1e-12)
    last = read_checkpoint(checkpoints.latest())
    assert last.kind == "circuit" and last.record == {"structure_seconds": 0.25}
    assert last.seconds >= 12.5
    assert re.fullmatch(r"[0-9a-f]{32}", last.run_id)  # a fresh id: the old folder had none


def old_circuit_folder(out, **fields) -> Circuit:
    """An earlier circuit run stopped after CIRCUIT_STOP batches, with ``fields`` (trained_on,
    early, seconds; None: left out) in its ``em_state.json`` as the writers of that format left
    them; its model."""
    model = circuit()
    folder = out / "checkpoints" / "em-00000002"
    model.save_pretrained(folder)
    state = {"settings": SETTINGS, "record": {},
             "progress": {"phase": 0, "epoch": 0, "batch": CIRCUIT_STOP, "step": CIRCUIT_STOP,
                          "phase_done": False, "history": [], "epoch_total": -1.5,
                          "epoch_units": 21},
             "early": None, "seconds": 1.0, **fields}
    (folder / "em_state.json").write_text(json.dumps(
        {key: value for key, value in state.items() if value is not None or key == "early"}))
    (out / "checkpoints" / "latest").write_text(folder.name + "\n")
    return model


def test_an_old_circuit_folder_keeps_its_data_record_and_early_stopping_state(tmp_path):
    """The first circuit writer recorded no ``trained_on`` (nothing to check: it resumes on
    any data) and no wall time (0 s before); a later one did (other data is refused). Its
    early-stopping state (scores, best epoch and the best epoch's parameters in ``best/``)
    comes back on resume."""
    digest = {"data_sha256": "a" * 64, "train_images": 30}
    other = {"data_sha256": "b" * 64, "train_images": 30}
    old_circuit_folder(tmp_path / "first", seconds=None)
    first = EMCheckpoints(tmp_path / "first", SETTINGS, trained_on=other)
    assert first.resume() and first.seconds_before == 0.0

    old_circuit_folder(tmp_path / "later", trained_on=digest)
    with pytest.raises(CheckpointError) as info:
        EMCheckpoints(tmp_path / "later", SETTINGS, trained_on=other).resume()
    assert str(info.value).startswith(
        f"the training data differs from what the checkpoint in {tmp_path / 'later'} was "
        "trained on (30 train images aaaa")
    assert EMCheckpoints(tmp_path / "later", SETTINGS, trained_on=digest).resume()

    state = {"scores": [-3.5, -3.25], "best_epoch": 2, "since": 1}
    model = old_circuit_folder(tmp_path / "early", early=state)
    best = {name: p.detach() + 0.5 for name, p in model.named_parameters()}
    persist.save(tmp_path / "early" / "checkpoints" / "em-00000002" / "best",
                                best, {}, em_checkpoints.BEST_TYPE)
    checkpoints = EMCheckpoints(tmp_path / "early", SETTINGS)
    resumed = Circuit.from_pretrained(checkpoints.resume())
    early = EarlyStopping(lambda: 0.0, lambda: dict(resumed.named_parameters()))
    checkpoints.restore_early(early)
    kept, kept_best = early.state()
    assert kept == state
    assert kept_best.keys() == best.keys()
    for name, value in best.items():
        torch.testing.assert_close(kept_best[name], value, rtol=0, atol=0, msg=name)


def test_an_unknown_or_newer_format_is_one_line_naming_folder_and_version(tmp_path, windows):
    train(student(), windows, HMM_CONFIG, out=tmp_path, progress=False)
    folder = EMCheckpoints(tmp_path).latest()
    state = folder / "checkpoint.json"
    raw = json.loads(state.read_text())
    for version in (em_checkpoints.FORMAT + 1, 1, "2", None):
        state.write_text(json.dumps({**raw, "format": version}))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path)
        message = str(info.value)
        assert str(folder) in message and f"format {version!r}" in message
        assert "\n" not in message
    state.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is damaged"):
        load_checkpoint(tmp_path)


def test_the_output_folder_check_reads_the_same_layout():
    """hmmlvd.core.outdir sits below the EM layer and names its files itself."""
    assert outdir.CHECKPOINT_STATE == em_checkpoints.STATE_FILE
    assert em_checkpoints.NAME.fullmatch(outdir.CHECKPOINT_PREFIX + "00000001")
    assert em_checkpoints.LEGACY_FILES["step"] == outdir.TEXT_STATE
    assert set(outdir.LEGACY_PREFIXES) == {"step-", "em-"}


# ----- the first HMM layout (no run id), unknown fields ---------------------------------------

def test_the_first_hmm_step_folder_without_a_run_id_resumes_as_a_new_run(tmp_path, windows,
                                                                        monkeypatch):
    """The first writer's ``train_state.json``: the phases form and the progress fields only
    (no run id, running totals, trained_on or early). It reads as format 1, resumes to the
    uninterrupted model, and the run goes on with a fresh run id; the old folder, the one it
    resumed from, is rotated away with the run's own."""
    reference = student()
    train(reference, windows, HMM_CONFIG, progress=False)
    hmm, _, _ = stopped_hmm(windows, monkeypatch)
    out = tmp_path / "run"
    folder = out / "checkpoints" / f"step-{CRASH_AT:08d}"
    hmm.save_pretrained(folder)
    (folder / "train_state.json").write_text(json.dumps(
        {"train_config": TRAIN_CONFIG, "epoch": 0, "batch": CRASH_AT, "step": CRASH_AT,
         "history": []}, indent=2))
    (out / "checkpoints" / "latest").write_text(folder.name + "\n")
    saved = read_checkpoint(folder)
    assert (saved.format, saved.kind, saved.run_id, saved.folder) == (1, "hmm", "", folder)

    resumed, config, checkpoints = load_checkpoint(out)
    train(resumed, windows, config, progress=False, checkpoints=checkpoints)
    for name, value in reference.parameters().items():
        torch.testing.assert_close(resumed.parameters()[name], value, rtol=1e-6, atol=1e-7,
                                   msg=name)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt-00000004", "ckpt-00000005", "latest"], names
    run_ids = {read_checkpoint(out / "checkpoints" / n).run_id for n in names[:2]}
    assert len(run_ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", run_ids.pop())


def test_unknown_fields_of_an_old_hmm_state_are_named(tmp_path):
    folder = tmp_path / "checkpoints" / "step-00000004"
    folder.mkdir(parents=True)
    state = folder / "train_state.json"
    state.write_text(json.dumps({"train_config": TRAIN_CONFIG, "epoch": 0, "batch": 4,
                                 "step": 4, "history": [], "momentum": 0.9}))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(folder)
    message = str(info.value)
    assert message.startswith(f"{state} is damaged or not from hmmlvd")
    assert "momentum" in message and "\n" not in message


@pytest.mark.parametrize("config", [None, "[1, 2]", "{not json", "{}", '{"model_type": 5}'],
                         ids=["missing", "not an object", "not JSON", "no model_type",
                              "model_type a number"])
def test_an_old_circuit_folder_with_a_damaged_model_config_reads_as_of_no_kind(tmp_path,
                                                                               config):
    """An earlier circuit checkpoint records no kind: it is read from the model's config.json,
    and one that is missing or damaged gives no kind (the model loader then names the file),
    never an exception of its own."""
    old_circuit_folder(tmp_path)
    folder = tmp_path / "checkpoints" / "em-00000002"
    if config is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(config)
    assert read_checkpoint(folder).kind == ""
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json"))):
        Circuit.from_pretrained(EMCheckpoints(tmp_path, SETTINGS).resume())
