"""scripts/lvd_vs_random.py on a tiny corpus with a tiny random BERT: both initialisations are
trained and evaluated for every H beside the n-gram baselines; LVD embeds only --lvd-windows
windows while EM runs on --max-windows; finished runs are reused, interrupted ones resume to
the same result, and the search table lists valid perplexities only."""

from __future__ import annotations

import importlib
import json

import pytest
from lvd_tiny import build_tiny_bert, write_tiny_wikitext
from script_loading import load_script

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
    seen = {"n": 0}

    def stop_after_five(*a):  # Ctrl-C arrives during the 6th batch
        seen["n"] += 1
        if seen["n"] == 6:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends
        return real(*a)

    monkeypatch.setattr(train_module, "expected_counts", stop_after_five)
    split = tmp_path / "split"
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 143
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "expected_counts", real)
    assert script.main(argv(corpus, bert, tmp_path, *extra, "--out", str(split))) == 0
    assert "resuming from epoch" in capsys.readouterr().out
    got = table_row(script, next(split.glob("lvd-h3-*"))).ppl
    assert got == pytest.approx(want, rel=1e-5)


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
