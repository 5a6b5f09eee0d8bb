"""scripts/lvd_vs_random.py on a tiny corpus with a tiny random BERT: both initialisations are
trained and evaluated for every H beside the n-gram baselines; LVD embeds only --lvd-windows
windows while EM runs on --max-windows; finished runs are reused, interrupted ones resume to
the same result, and the search table lists valid perplexities only."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil

import pytest
import torch
from conftest import signal_during_e_step
from lvd_tiny import build_tiny_bert, write_tiny_wikitext
from script_loading import load_script

from hmmlvd import HMM
from hmmlvd.data import load_wikitext
from hmmlvd.em.config import EMConfig
from hmmlvd.ngram import KneserNey

train_module = importlib.import_module("hmmlvd.hmm.train")  # `hmmlvd.hmm.train` is a function


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def corpus(tmp_path):
    return write_tiny_wikitext(tmp_path / "wt", (30, 6, 6), words_per_line=5, seed=2)


def argv(corpus, bert, tmp_path, *extra):
    return ["--data-dir", str(corpus), "--hidden-states", "2", "3", "--lvd-windows", "40",
            "--max-windows", "100", "--length", "4", "--epochs", "1", "--phase2-epochs", "1",
            "--batch-size", "32", "--encoder", str(bert), "--cache-dir",
            str(tmp_path / "cache"), "--kmeans-iters", "3", "--device", "cpu", "--out",
            str(tmp_path / "runs"), *extra]


def table_row(script, folder):
    """The table row the script reads from a finished run folder."""
    return script.row_of(json.loads((folder / "results.json").read_text()), folder)


def count_encoded_windows(monkeypatch) -> list[int]:
    """The number of windows of each chunk the encoder embeds (a cache hit embeds none)."""
    suffix = importlib.import_module("hmmlvd.lvd.text.suffix")
    encoded = []
    real = suffix._embed_chunk

    def counting(store, encoder, windows, lo, hi, *rest):
        encoded.append(hi - lo)
        return real(store, encoder, windows, lo, hi, *rest)

    monkeypatch.setattr(suffix, "_embed_chunk", counting)
    return encoded


def test_script_writes_table_plot_and_section_with_baselines(corpus, bert, tmp_path, capsys,
                                                             monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    encoded = count_encoded_windows(monkeypatch)
    results = tmp_path / "docs" / "results.md"
    assert script.main(argv(corpus, bert, tmp_path, "--write", str(results))) == 0
    printed = capsys.readouterr().out
    # the encoder embeds the LVD subset once: the second H reads the sweep's embedding cache
    assert sum(encoded) == 40 and printed.count("LVD stages (s)") == 2
    for h in (2, 3):
        for init in ("LVD", "random"):
            assert f"H={h} {init}: valid ppl" in printed
            assert f"| {init} init | {h} |" in printed
    data = load_wikitext(corpus)
    trigram = KneserNey(len(data.vocab), 3).fit(data.train).score(data.test).perplexity
    assert "| Kneser–Ney 3-gram (train stream) | - | " in printed
    assert f"{trigram:.1f}" in printed
    assert (tmp_path / "docs" / "lvd_vs_random.png").stat().st_size > 0
    section = results.read_text()
    assert "<!-- lvd_vs_random:begin -->" in section and "| random init | 3 |" in section
    assert "LVD from 40 windows" in section and "EM on a seeded random subset of 100" in section
    # every run folder: its results.json; no model without --save-models, checkpoints deleted
    folders = list((tmp_path / "runs").glob("*-h*-*"))
    assert len(folders) == 4 and all(
        (f / "results.json").is_file() and not (f / "model.safetensors").exists()
        and not (f / "checkpoints").exists() for f in folders)


def test_finished_runs_are_reused_and_changed_settings_make_new_runs(corpus, bert, tmp_path,
                                                                     capsys, monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    assert script.main(argv(corpus, bert, tmp_path, "--inits", "random")) == 0
    first = capsys.readouterr().out
    calls = []
    monkeypatch.setattr(script, "train_text", lambda *a, **k: calls.append(1))
    assert script.main(argv(corpus, bert, tmp_path, "--inits", "random")) == 0
    again = capsys.readouterr().out
    assert calls == [] and again.count("finished earlier, reused") == 2
    assert first.split("\n| model")[1] == again.split("\n| model")[1]  # the same table
    monkeypatch.undo()
    script = load_script("lvd_vs_random", monkeypatch)
    assert script.main(argv(corpus, bert, tmp_path, "--inits", "random",
                            "--pseudocount", "0.01")) == 0
    assert "finished earlier" not in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("random-h2-*"))) == 2


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_result(corpus, bert, tmp_path,
                                                                  capsys, monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    extra = ("--inits", "LVD", "--hidden-states", "3", "--checkpoint-every", "1")
    whole = tmp_path / "whole"
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(whole))) == 0
    want = table_row(script, next(whole.glob("lvd-h3-*"))).ppl
    real = train_module.expected_counts
    signal_during_e_step(monkeypatch, 6)  # what a scheduler sends, during the 6th batch
    split = tmp_path / "split"
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 143
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "expected_counts", real)
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 0
    assert "resuming from epoch" in capsys.readouterr().out
    resumed = table_row(script, next(split.glob("lvd-h3-*")))
    assert resumed.ppl == pytest.approx(want, rel=1e-5)
    # the initialisation ran before the stop: its stage seconds come back from the checkpoint
    assert {"embed", "cluster", "mle", "em", "eval"} <= set(resumed.seconds)


def test_search_table_lists_valid_perplexity_only(corpus, bert, tmp_path, capsys, monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    for step in ("0.3", "0.6"):
        assert script.main(argv(corpus, bert, tmp_path, "--inits", "random", "--splits",
                                "valid", "--step-size", step)) == 0
    capsys.readouterr()
    results = tmp_path / "results.md"
    assert script.main(["--out", str(tmp_path / "runs"), "--search-table", "--write",
                        str(results)]) == 0
    printed = capsys.readouterr().out
    assert "1 x 0.3, 1 x 0.1" in printed and "1 x 0.6, 1 x 0.1" in printed
    assert "test" not in printed
    assert "<!-- lvd_schedule_search:begin -->" in results.read_text()
    folders = [f.parent for f in (tmp_path / "runs").glob("*/results.json")]
    assert len(folders) == 4 and all("test" not in table_row(script, f).ppl for f in folders)


def test_bad_lvd_windows_is_a_one_line_error(corpus, bert, tmp_path, capsys, monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    assert script.main(argv(corpus, bert, tmp_path, "--lvd-windows", "100000")) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvd_vs_random: error:") and "only" in err


def test_a_second_sweep_on_the_same_out_is_refused(corpus, bert, tmp_path, capsys, monkeypatch):
    from hmmlvd.core.lock import output_lock

    script = load_script("lvd_vs_random", monkeypatch)
    (tmp_path / "runs").mkdir()
    with output_lock(tmp_path / "runs"):
        assert script.main(argv(corpus, bert, tmp_path, "--inits", "random")) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvd_vs_random: error:") and "in use" in err


def test_run_digest_keeps_earlier_runs_folders(monkeypatch):
    """Run folders are named by a digest of the settings; the full-data sweep's runs were named
    by this dict (the schedule as phases), which the same flags must still give, so that their
    folders are found and runs in progress resume. A setting added later is named only once it
    differs from what earlier runs implied (float32 E-step) or from its default."""
    script = load_script("lvd_vs_random", monkeypatch)
    sweep = EMConfig(epochs=2, step_size=0.3, final_full_batch=1, batch_size=16384,
                     pseudocount=1e-4, dtype="float32", checkpoint_every=25, keep_checkpoints=1)
    assert script.digest_config(sweep) == {
        "phases": [{"epochs": 2, "step_size": 0.3, "full_batch": False},
                   {"epochs": 1, "step_size": 1.0, "full_batch": True}],
        "batch_size": 16384, "pseudocount": 1e-4, "full_batch": False, "seed": 0}
    two = EMConfig(epochs=2, step_size=0.3, phase2_epochs=1, phase2_step_size=0.1,
                   final_full_batch=0, batch_size=8192, pseudocount=1e-3, dtype="float32")
    assert script.digest_config(two)["phases"] == [
        {"epochs": 2, "step_size": 0.3, "full_batch": False},
        {"epochs": 1, "step_size": 0.1, "full_batch": False}]
    changed = [EMConfig(**{**sweep.to_dict(), **c}) for c in (
        {"dtype": "bfloat16"}, {"patience": 2}, {"pseudocount_per": "data"},
        {"final_step_size": 0.05})]
    for config in changed:
        named = script.digest_config(config)
        assert len(named) == 6, named  # the one changed setting is named


# ----- run folders an earlier version of the script left ----------------------------------------
#: The flags of the hand-built folders below (dtypes given: "auto" differs between machines).
FIXED = ("--dtype", "float32", "--encoder-dtype", "float32")
PHASES = [{"epochs": 1, "step_size": 0.3, "full_batch": False},
          {"epochs": 1, "step_size": 0.1, "full_batch": False},
          {"epochs": 1, "step_size": 1.0, "full_batch": True}]


def earlier_settings(init, h, data, bert):
    """The settings an earlier sweep of ``argv(...) + FIXED`` named its run folders by, written
    out by hand (their folder name: :func:`earlier_folder`)."""
    settings = {"init": init, "num_states": h, "length": 4, "seed": 0, "train_windows": 100,
                "train_tokens": len(data.train), "vocab_size": len(data.vocab),
                "train_config": {"phases": PHASES, "batch_size": 32, "pseudocount": 1e-4,
                                 "full_batch": False, "seed": 0},
                "max_eval_tokens": None}
    if init == "LVD":
        settings["lvd"] = {"lvd_windows": 40, "encoder": str(bert), "encoder_dtype": "float32",
                           "mode": "masked", "kmeans_sample": None, "kmeans_iters": 3}
    return settings


def earlier_folder(out, settings):
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return out / f"{settings['init'].lower()}-h{settings['num_states']}-{digest}"


def test_finished_runs_of_an_earlier_sweep_are_reused_without_training(corpus, bert, tmp_path,
                                                                      capsys, monkeypatch):
    """Folders finished by an earlier version of the script, built by hand: ``results.json``
    holding the table row itself, the model under ``model/``, no checkpoints. The sweep reads
    their rows as they are (no training) beside a run it trains now, and the search table lists
    them."""
    script = load_script("lvd_vs_random", monkeypatch)
    data = load_wikitext(corpus)
    out = tmp_path / "runs"
    rows = {}
    for init, h in (("random", 2), ("random", 3), ("LVD", 2)):
        settings = earlier_settings(init, h, data, bert)
        seconds = {"em": 40.0 + h, "eval": 5.0}
        if init == "LVD":
            seconds = {"embed": 1.0, "cluster": 2.0, "mle": 3.0, **seconds}
        rows[init, h] = {"init": init, "num_states": h,
                         "ppl": {"valid": 100.25 + h, "test": 200.75 + h},
                         "seconds": seconds, "settings": settings}
        folder = earlier_folder(out, settings)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text("{}")
        (folder / "results.json").write_text(json.dumps(rows[init, h], indent=2))
    trained = []
    real = script.train_text
    monkeypatch.setattr(script, "train_text", lambda run: trained.append(run) or real(run))
    results = tmp_path / "results.md"
    assert script.main(argv(corpus, bert, tmp_path, *FIXED, "--save-models", "--write",
                            str(results))) == 0
    printed = capsys.readouterr().out
    assert [(r.lvd is not None, r.hidden_states) for r in trained] == [(True, 3)]
    assert printed.count("finished earlier, reused") == 3
    section = results.read_text()
    assert "| random init | 2 | 102.2 | 202.8 | float32 | - | - | - | 42 | 5 |" in section
    assert "| random init | 3 | 103.2 | 203.8 | float32 | - | - | - | 43 | 5 |" in section
    assert "| LVD init | 2 | 102.2 | 202.8 | float32 | 1 | 2 | 3 | 42 | 5 |" in section
    assert "| LVD init | 3 |" in section
    for row in rows.values():  # left as they were
        folder = earlier_folder(out, row["settings"])
        assert json.loads((folder / "results.json").read_text()) == row
    # the run trained now sits beside them, under its own digest, with its model
    new = list(out.glob("lvd-h3-*"))
    assert len(new) == 1 and HMM.from_pretrained(new[0]).num_states == 3
    assert script.main(["--out", str(out), "--search-table"]) == 0
    listed = capsys.readouterr().out
    assert "| 2 | random | 100 | 32 | 1 x 0.3, 1 x 0.1, 1 x full batch | 0.0001 | - | 102.2 |" \
        in listed and "| 2 | LVD | 100 | 32 |" in listed and "| 3 | LVD |" in listed


def as_an_earlier_sweep_left_it(folder, layout, init_seconds):
    """Rewrite the run stopped in ``folder`` (its newest checkpoint: the model and where EM
    stood) as an earlier version of the script left a stopped run, by hand: ``init.json`` with
    the initialisation's seconds beside ``checkpoints/``, nothing else, and one checkpoint in
    ``layout`` -- "step": hmmlvd's earlier HMM layout (``step-NNNNNNNN/``: the model files
    and ``train_state.json`` with the EM config, the progress fields at the top level, run_id,
    trained_on {} and early {}); "ckpt": the one checkpoint format as that script wrote it
    (settings, trained_on and record empty)."""
    root = folder / "checkpoints"
    newest = root / (root / "latest").read_text().strip()
    state = json.loads((newest / "checkpoint.json").read_text())
    progress = state["progress"]
    assert progress["phase"] == 0 and not progress["phase_done"]  # what "step" can express
    saved = tmp = folder.parent / "saved-checkpoint"
    shutil.move(newest, tmp)
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir()
    if layout == "step":
        name = f"step-{progress['step']:08d}"
        (root / name).mkdir()
        for file in ("model.safetensors", "config.json", "vocab.txt"):
            shutil.copy(saved / file, root / name / file)
        (root / name / "train_state.json").write_text(json.dumps({
            "em_config": state["em_config"], "epoch": progress["epoch"],
            "batch": progress["batch"], "step": progress["step"],
            "epoch_total": progress["epoch_total"], "epoch_units": progress["epoch_units"],
            "history": progress["history"], "run_id": "0123456789abcdef" * 2,
            "trained_on": {}, "early": {}}, indent=2))
    else:
        name = "ckpt-00000007"
        shutil.copytree(saved, root / name)
        (root / name / "checkpoint.json").write_text(json.dumps({
            "format": 2, "kind": "hmm", "em_config": state["em_config"], "settings": {},
            "trained_on": {}, "run_id": "0123456789abcdef" * 2, "progress": progress,
            "early": None, "record": {}, "seconds": 1.5}, indent=2))
    shutil.rmtree(saved)
    (root / "latest").write_text(name + "\n")
    (folder / "init.json").write_text(json.dumps(init_seconds))
    return progress


@pytest.mark.parametrize("layout", ["step", "ckpt"])
def test_a_run_an_earlier_sweep_stopped_resumes_to_the_uninterrupted_result(
        layout, corpus, bert, tmp_path, capsys, monkeypatch):
    """A run folder an earlier version of the script left stopped mid-EM (rewritten by hand
    into its layout: :func:`as_an_earlier_sweep_left_it`) resumes through the text pipeline
    and ends with the parameters of an uninterrupted run; its row takes the initialisation's
    seconds from ``init.json`` and its checkpoints are deleted."""
    script = load_script("lvd_vs_random", monkeypatch)
    extra = ("--inits", "LVD", "--hidden-states", "3", "--checkpoint-every", "1",
             "--save-models", *FIXED)
    whole = tmp_path / "whole"
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(whole))) == 0
    reference = next(whole.glob("lvd-h3-*"))
    real = train_module.expected_counts
    signal_during_e_step(monkeypatch, 6)  # 4 batches an epoch: epoch 2, batch 2
    split = tmp_path / "split"
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 143
    monkeypatch.setattr(train_module, "expected_counts", real)
    folder = next(split.glob("lvd-h3-*"))
    assert folder.name == reference.name
    init_seconds = {"embed": 11.0, "cluster": 22.0, "mle": 33.0}
    at = as_an_earlier_sweep_left_it(folder, layout, init_seconds)
    assert at["step"] >= 5 and at["history"]  # mid-EM, one epoch done
    capsys.readouterr()
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 0
    printed = capsys.readouterr().out
    assert f"resuming from epoch {at['epoch'] + 1}, batch {at['batch']}" in printed
    got, want = HMM.from_pretrained(folder), HMM.from_pretrained(reference)
    for name, tensor in want.parameters().items():
        torch.testing.assert_close(got.parameters()[name], tensor, rtol=1e-6, atol=0)
    row, whole_row = table_row(script, folder), table_row(script, reference)
    assert row.ppl == pytest.approx(whole_row.ppl, rel=1e-6)
    assert {k: row.seconds[k] for k in init_seconds} == init_seconds
    assert len(json.loads((folder / "results.json").read_text())["history"]) == 3
    assert not (folder / "checkpoints").exists()


OLD_SECTION = """# Results

<!-- lvd_vs_random:begin -->
## LVD vs random init (`scripts/lvd_vs_random.py`)

Command: `python scripts/lvd_vs_random.py --hidden-states 2 64`\x20\x20
Machine: old-vm: some CPU, 2 CPUs\x20\x20
Date: 2026-12-01 19:44 UTC

| model | H | valid ppl | test ppl | embed s | cluster s | MLE s | EM s | eval s |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| unigram (train stream) | - | 9999.0 | 9999.0 | - | - | - | - | - |
| LVD init | 64 | 326.2 | 306.4 | 294 | 61 | 0 | 334 | 3 |
| random init | 64 | 325.8 | 308.2 | - | - | - | 153 | 2 |
| random init | 2 | 7777.7 | 8888.8 | - | - | - | 1 | 1 |
<!-- lvd_vs_random:end -->

After the section.
"""


def sweep_h2_into(script, results, corpus, bert, tmp_path, *extra) -> int:
    """A random-init sweep of H = 2 that records into ``results``."""
    return script.main(argv(corpus, bert, tmp_path, "--inits", "random", "--hidden-states", "2",
                            "--write", str(results), *extra))


def test_keep_rows_keeps_the_recorded_rows_of_runs_not_rerun(corpus, bert, tmp_path, capsys,
                                                             monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    results = tmp_path / "results.md"
    results.write_text(OLD_SECTION)
    assert sweep_h2_into(script, results, corpus, bert, tmp_path, "--keep-rows") == 0
    printed = capsys.readouterr().out
    text = results.read_text()
    assert text.startswith("# Results\n") and text.endswith("After the section.\n")
    body = text.split("<!-- lvd_vs_random:begin -->")[1].split("<!-- lvd_vs_random:end -->")[0]
    # H = 64 was not run: both of its rows stay with their numbers, the dtype that table's runs
    # used and the date of that table's record
    kept_lvd = "| LVD init | 64 | 326.2 | 306.4 | float32 | 294 | 61 | 0 | 334 | 3 | 2026-12-01 |"
    assert kept_lvd in body
    assert "| random init | 64 | 325.8 | 308.2 | float32 | - | - | - | 153 | 2 | 2026-12-01 |" \
        in body
    # H = 2 random ran: its new row replaces the recorded one; baselines are this run's
    new = table_row(script, next((tmp_path / "runs").glob("random-h2-*")))
    assert "7777.7" not in body and "9999.0" not in body
    assert f"| random init | 2 | {new.ppl['valid']:.1f} | {new.ppl['test']:.1f} |" in body
    assert body.count("| random init | 2 |") == 1 and "| LVD init | 2 |" not in body
    # the kept rows' provenance is quoted, the new one heads the section
    assert "Date: 2026-12-01 19:44 UTC" in body and "Machine: old-vm: some CPU" in body
    assert "Rows of H = 64 are kept" in body and "Rows of H = 64 are kept" in printed
    # a second run keeps them again: the rows carry their own finished date now
    assert sweep_h2_into(script, results, corpus, bert, tmp_path, "--keep-rows") == 0
    again = results.read_text()
    assert kept_lvd in again


def test_without_keep_rows_the_recorded_rows_are_replaced(corpus, bert, tmp_path, capsys,
                                                          monkeypatch):
    script = load_script("lvd_vs_random", monkeypatch)
    results = tmp_path / "results.md"
    results.write_text(OLD_SECTION)
    assert sweep_h2_into(script, results, corpus, bert, tmp_path) == 0
    assert "| LVD init | 64 |" not in results.read_text()
    with pytest.raises(SystemExit):
        script.main(argv(corpus, bert, tmp_path, "--keep-rows"))
    assert "--keep-rows needs --write" in capsys.readouterr().err
