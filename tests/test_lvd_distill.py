"""The LVD pipeline end to end on tiny data with a tiny random BERT (no download): embeddings,
labels, a valid MLE-initialised HMM, EM finetuning, cache reuse, the `hmmlvd lvd` command and
its errors."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from lvd_tiny import TINY_WORDS, build_tiny_bert, tiny_vocab, write_tiny_wikitext

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.core.errors import DataError, HMMLVDError
from hmmlvd.data import TokenWindows, load_wikitext
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMMConfig, mle_from_labels
from hmmlvd.hmm.train import train
from hmmlvd.lvd.text import suffix
from hmmlvd.lvd.text.distill import LVDSettings, distill, embed, lvd_subset, run_lvd

LENGTH = 5
distill_module = importlib.import_module("hmmlvd.lvd.text.distill")  # `distill`: the function


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def windows():
    stream = np.random.default_rng(0).integers(0, len(TINY_WORDS), size=80)
    return TokenWindows(stream, LENGTH)


def settings_for(encoder_dir, cache_dir) -> LVDSettings:
    return LVDSettings(encoder=str(encoder_dir), cache_dir=cache_dir, embed_batch_size=16,
                       kmeans_iters=5)


def test_run_lvd_gives_labels_and_the_mle_of_them(encoder_dir, windows, tmp_path):
    result = run_lvd(windows, 4, tiny_vocab(), settings_for(encoder_dir, tmp_path),
                     progress=False)
    assert result.labels.shape == (len(windows), LENGTH)
    assert result.labels.min() >= 0 and result.labels.max() < 4
    assert {"embed", "cluster", "mle"} <= set(result.seconds)
    result.hmm.validate()
    settings = settings_for(encoder_dir, tmp_path)
    expected = mle_from_labels(windows.as_array(), result.labels,
                               HMMConfig(4, len(TINY_WORDS), LENGTH),
                               pseudocount=settings.pseudocount)
    for name, p in expected.parameters().items():
        assert np.allclose(result.hmm.parameters()[name].numpy(), p.numpy(), atol=1e-6), name
    assert result.hmm.vocab == tiny_vocab()


def test_second_run_reads_the_cache_and_calls_no_encoder(encoder_dir, windows, tmp_path,
                                                          monkeypatch):
    settings = settings_for(encoder_dir, tmp_path)
    first = run_lvd(windows, 3, tiny_vocab(), settings, progress=False)
    calls = []
    original = suffix.masked_suffix_embeddings
    monkeypatch.setattr(suffix, "masked_suffix_embeddings",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    second = run_lvd(windows, 3, tiny_vocab(), settings, progress=False)
    assert calls == []
    assert (first.labels == second.labels).all()


def test_distill_is_the_mle_init_and_train_finetunes_it(encoder_dir, windows, tmp_path):
    settings = settings_for(encoder_dir, tmp_path)
    init = run_lvd(windows, 3, tiny_vocab(), settings, progress=False).hmm
    tuned = distill(windows, 3, tiny_vocab(), settings=settings, progress=False)
    for name, p in init.parameters().items():  # distillation runs no EM of its own
        assert torch.equal(tuned.parameters()[name], p), name
    config = EMConfig(epochs=3, step_size=1.0, final_full_batch=0, batch_size=32,
                      full_batch=True)  # monotone
    train(tuned, windows, config, progress=False)
    x = windows[np.arange(len(windows))]
    assert tuned.log_likelihood(x).sum() > init.log_likelihood(x).sum()


def test_lvd_subset_sizes_and_errors():
    stream = np.arange(200) % 7
    every = TokenWindows(stream, LENGTH)
    assert len(lvd_subset(stream, LENGTH, None)) == len(every)  # fewer than the default
    some = lvd_subset(stream, LENGTH, 50, seed=3)
    assert len(some) == 50 and len(set(some.starts.tolist())) == 50
    assert np.array_equal(some.as_array(), lvd_subset(stream, LENGTH, 50, seed=3).as_array())
    assert not np.array_equal(some.starts, lvd_subset(stream, LENGTH, 50, seed=4).starts)
    assert len(lvd_subset(stream, LENGTH, len(every))) == len(every)
    with pytest.raises(DataError, match="at least 1, got 0"):
        lvd_subset(stream, LENGTH, 0)
    with pytest.raises(DataError, match=f"only {len(every)} windows"):
        lvd_subset(stream, LENGTH, len(every) + 1)
    with pytest.raises(DataError, match="must be an integer"):
        lvd_subset(stream, LENGTH, 2.5)


def test_lvd_subset_default_caps_large_streams(monkeypatch):
    monkeypatch.setattr(distill_module, "DEFAULT_LVD_WINDOWS", 30)
    stream = np.arange(200) % 7
    assert len(lvd_subset(stream, LENGTH)) == 30


def test_more_states_than_windows_is_a_clear_error(encoder_dir, tmp_path):
    few = TokenWindows(np.arange(LENGTH + 2) % len(TINY_WORDS), LENGTH)  # 3 windows
    with pytest.raises(DataError, match="at least 8 windows"):
        run_lvd(few, 8, tiny_vocab(), settings_for(encoder_dir, tmp_path), progress=False)


def test_lvd_command_end_to_end(encoder_dir, tmp_path, capsys):
    folder = write_tiny_wikitext(tmp_path / "wt", (40, 8, 8), words_per_line=6, seed=1)
    out = tmp_path / "run"
    argv = ["lvd", "--data-dir", str(folder), "--encoder", str(encoder_dir), "--hidden-states",
            "3", "--length", str(LENGTH), "--epochs", "1", "--final-full-batch", "0",
            "--batch-size", "64", "--device",
            "cpu", "--cache-dir", str(tmp_path / "cache"), "--kmeans-iters", "5", "--out",
            str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "LVD stages" in printed and "test" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "lvd" and "cluster" in results["lvd_seconds"]
    HMM.from_pretrained(out).validate()


def test_lvd_command_with_unloadable_encoder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "wt"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.tokens").write_text("the cat sat on the mat\n" * 5)
    argv = ["lvd", "--data-dir", str(folder), "--encoder", "no-such-org/no-such-encoder",
            "--hidden-states", "2", "--length", "4", "--cache-dir", str(tmp_path / "c"),
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-encoder" in err and "Traceback" not in err


def test_bfloat16_encoder_and_bad_dtype(encoder_dir, windows, tmp_path):
    settings = settings_for(encoder_dir, tmp_path)
    settings.encoder_dtype = "bfloat16"
    half = embed(windows, tiny_vocab(), settings, progress=False)
    settings.encoder_dtype = "float32"
    full = embed(windows, tiny_vocab(), settings, progress=False)
    assert half.shape == full.shape
    cos = (np.asarray(half, np.float32) * np.asarray(full, np.float32)).sum(-1) / (
        np.linalg.norm(half, axis=-1) * np.linalg.norm(full, axis=-1))
    assert cos.min() > 0.95  # same suffix embeddings up to bf16 rounding
    settings.encoder_dtype = "float16"
    with pytest.raises(HMMLVDError, match="encoder dtype"):
        embed(windows, tiny_vocab(), settings, progress=False)


def test_lvd_command_on_an_empty_corpus(encoder_dir, tmp_path, capsys):
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text("\n\n")
    for split in ("valid", "test"):
        (folder / f"wiki.{split}.tokens").write_text("the cat\n")
    argv = ["lvd", "--data-dir", str(folder), "--encoder", str(encoder_dir), "--hidden-states",
            "2", "--length", "3", "--cache-dir", str(tmp_path / "c"), "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'train'" in err and "no words" in err and "Traceback" not in err


def lvd_argv(folder, encoder_dir, tmp_path, out, *extra):
    return ["lvd", "--data-dir", str(folder), "--encoder", str(encoder_dir), "--hidden-states",
            "3", "--length", str(LENGTH), "--batch-size", "64", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--kmeans-iters", "5", "--out", str(out),
            *extra]


def test_lvd_embeds_lvd_windows_and_trains_on_max_windows(encoder_dir, tmp_path, capsys,
                                                          monkeypatch):
    folder = write_tiny_wikitext(tmp_path / "wt", (40, 8, 8), words_per_line=6, seed=1)
    embedded = []
    original = distill_module.embed
    monkeypatch.setattr(distill_module, "embed",
                        lambda w, *a, **k: embedded.append(len(w)) or original(w, *a, **k))
    out = tmp_path / "run"
    argv = lvd_argv(folder, encoder_dir, tmp_path, out, "--lvd-windows", "37", "--epochs", "1",
                    "--final-full-batch", "0", "--no-eval")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    train_windows = len(load_wikitext(folder).train) - LENGTH + 1
    assert embedded == [37]  # only the LVD subset goes through the encoder ...
    assert results["lvd_windows"] == 37
    assert results["train_windows"] == train_windows  # ... while EM sees every window
    assert "37 of the" in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [("0", "at least 1, got 0"),
                                            ("100000", "only")])
def test_lvd_windows_bad_values_are_one_line_errors(encoder_dir, tmp_path, capsys, value,
                                                    message):
    folder = write_tiny_wikitext(tmp_path / "wt", (40, 8, 8), words_per_line=6, seed=1)
    argv = lvd_argv(folder, encoder_dir, tmp_path, tmp_path / "run", "--lvd-windows", value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hmmlvd lvd: error:") and message in err and "Traceback" not in err


def test_lvd_init_saved_with_zero_epochs_then_train_init_continues(encoder_dir, tmp_path,
                                                                    capsys):
    folder = write_tiny_wikitext(tmp_path / "wt", (40, 8, 8), words_per_line=6, seed=1)
    init_dir = tmp_path / "init"
    assert main(lvd_argv(folder, encoder_dir, tmp_path, init_dir, "--epochs", "0",
                         "--final-full-batch", "0", "--no-eval")) == 0
    init = HMM.from_pretrained(init_dir)
    data = load_wikitext(folder)
    windows = TokenWindows(data.train, LENGTH)
    labels_hmm = run_lvd(windows, 3, data.vocab,
                         settings_for(encoder_dir, tmp_path / "cache"), progress=False).hmm
    for name, p in labels_hmm.parameters().items():  # --epochs 0: the MLE init itself
        assert torch.allclose(init.parameters()[name], p, atol=1e-6), name
    out = tmp_path / "em"
    argv = ["train", "--data-dir", str(folder), "--init", str(init_dir), "--epochs", "2",
            "--final-full-batch", "0", "--batch-size", "1000", "--step-size", "1.0",
            "--pseudocount", "1e-4", "--full-batch", "--device", "cpu", "--no-eval", "--out",
            str(out)]
    assert main(argv) == 0
    tuned = HMM.from_pretrained(out)
    assert tuned.config == init.config
    reference = labels_hmm  # the same two full-batch EM epochs, run here by the library
    train(reference, windows, EMConfig(epochs=2, step_size=1.0, final_full_batch=0, batch_size=1000,
                                          pseudocount=1e-4, full_batch=True), progress=False)
    for name, p in reference.parameters().items():
        assert torch.allclose(tuned.parameters()[name], p, atol=1e-5), name
    x = windows[np.arange(len(windows))]
    assert tuned.log_likelihood(x).sum() > init.log_likelihood(x).sum()
    results = json.loads((out / "results.json").read_text())
    assert results["init"] == str(init_dir)


def test_a_resumed_lvd_run_still_records_its_initialisation(encoder_dir, tmp_path, capsys,
                                                             monkeypatch):
    """`hmmlvd lvd` stopped by SIGTERM during EM, then ``--resume``: the resumed run does not
    distil again, yet its results.json says how LVD initialised it (stage seconds and subset
    size, kept with the checkpoints), as an uninterrupted run's does."""
    import os
    import signal

    train_module = importlib.import_module("hmmlvd.hmm.train")  # `hmmlvd.hmm.train`: a function
    folder = write_tiny_wikitext(tmp_path / "wt", (40, 8, 8), words_per_line=6, seed=1)
    out = tmp_path / "run"
    argv = lvd_argv(folder, encoder_dir, tmp_path, out, "--lvd-windows", "37", "--epochs", "2",
                    "--batch-size", "32", "--checkpoint-every", "1", "--no-eval")
    real, calls = train_module.expected_counts, [0]

    def stop_in_the_third_batch(*a):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a)

    monkeypatch.setattr(train_module, "expected_counts", stop_in_the_third_batch)
    assert main(argv) == 143
    stopped = capsys.readouterr().out
    monkeypatch.setattr(train_module, "expected_counts", real)
    distilled = []
    monkeypatch.setattr(distill_module, "run_lvd", lambda *a, **k: distilled.append(1))
    assert main([*argv, "--resume"]) == 0
    assert distilled == [] and "resuming from epoch 1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["lvd_windows"] == 37 and set(results["lvd_seconds"]) == {"embed", "cluster",
                                                                            "mle"}
    line = next(x for x in stopped.splitlines() if x.startswith("LVD stages (s): "))
    measured = dict(item.split() for item in line.removeprefix("LVD stages (s): ").split(", "))
    # what the stopped run measured
    assert measured == {k: f"{v:.1f}" for k, v in results["lvd_seconds"].items()}
