"""The `hmmlvd` command line end to end on a tiny generated corpus: train, eval, sample,
resume, and errors reported without a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from word_corpus import WORDS, write_word_corpus

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.data import load_wikitext
from hmmlvd.hmm import sliding_perplexity
from hmmlvd.ngram import KneserNey


@pytest.fixture
def corpus(tmp_path):
    """A WikiText-style folder with random lines over 11 words."""
    return write_word_corpus(tmp_path / "wt")


def train_args(corpus, out, *extra):
    return ["train", "--data-dir", str(corpus), "--hidden-states", "3", "--length", "6",
            "--epochs", "2", "--final-full-batch", "0",
            "--batch-size", "32", "--step-size", "0.5", "--device", "cpu",
            "--out", str(out), *extra]


def test_train_saves_model_and_reports_perplexity(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out)) == 0
    printed = capsys.readouterr().out
    hmm = HMM.from_pretrained(out)
    data = load_wikitext(corpus)
    assert hmm.vocab == data.vocab
    results = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        expected = sliding_perplexity(hmm, data.split(split))
        assert results["eval"][split]["sliding_ppl"] == pytest.approx(expected.perplexity)
        assert results["eval"][split]["tokens"] == len(data.split(split))
        assert f"{expected.perplexity:.2f}" in printed
    assert len(results["history"]) == 2


def test_eval_and_sample_use_the_saved_model(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--no-eval")) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data-dir", str(corpus), "--splits", "test",
                 "--window-ppl", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    hmm = HMM.from_pretrained(out)
    expected = sliding_perplexity(hmm, load_wikitext(corpus).test).perplexity
    assert f"{expected:.2f}" in printed and "window ppl" in printed
    assert main(["sample", "--model", str(out), "--prefix", "the cat", "--num-samples", "4",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        words = line.split()
        assert words[:2] == ["the", "cat"] and len(words) == 6
        assert set(words) <= {*WORDS, "<eos>"}


def test_resume_from_a_mid_epoch_checkpoint_reaches_the_same_model(corpus, tmp_path):
    full = tmp_path / "full"
    assert main(train_args(corpus, full, "--no-eval")) == 0
    run = tmp_path / "run"
    args = train_args(corpus, run, "--no-eval", "--checkpoint-every", "1")
    assert main(args) == 0
    # pretend the run died after the second-to-last step: point `latest` back at it
    checkpoints = run / "checkpoints"
    older = sorted(p.name for p in checkpoints.glob("ckpt-*"))[0]
    assert json.loads((checkpoints / older / "checkpoint.json").read_text())["progress"][
        "batch"] > 0
    (checkpoints / "latest").write_text(older + "\n")
    (run / "model.safetensors").unlink()
    assert main([*args, "--resume"]) == 0
    a, b = HMM.from_pretrained(full), HMM.from_pretrained(run)
    for name, p in a.parameters().items():
        assert np.allclose(p.numpy(), b.parameters()[name].numpy(), atol=1e-6), name


def test_resume_with_other_settings_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--no-eval")) == 0
    capsys.readouterr()
    assert main([*train_args(corpus, out, "--no-eval"), "--resume", "--pseudocount", "0.5"]) == 2
    assert "different training settings" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data-dir", "/nonexistent/wt", "--out", "/tmp/x"], "does not exist"),
    (["eval", "--model", "/nonexistent/model"], "does not exist"),
])
def test_errors_are_reported_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_without_checkpoint(corpus, tmp_path, capsys):
    assert main([*train_args(corpus, tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--max-windows", "0"], "max_windows is 0"),
    (["--hidden-states", "0"], "num_states must be a positive integer, got 0"),
    (["--length", "0"], "window length must be >= 1"),
])
def test_bad_sizes_are_one_line_errors(corpus, tmp_path, capsys, extra, message):
    assert main([*train_args(corpus, tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_with_data_of_another_vocabulary(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--no-eval")) == 0
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "valid", "test"):  # one word more than the run's data
        text = (corpus / f"wiki.{split}.tokens").read_text()
        (other / f"wiki.{split}.tokens").write_text(text + "zebra the cat\n")
    capsys.readouterr()
    assert main([*train_args(other, out, "--no-eval"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "vocabulary differs" in err and "12 vs 13 words" in err and "Traceback" not in err


def test_eval_on_data_with_words_outside_the_models_vocabulary(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--no-eval")) == 0
    (corpus / "wiki.test.tokens").write_text("the zebra sat\n")
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data-dir", str(corpus), "--device",
                 "cpu"]) == 2
    err = capsys.readouterr().err
    assert "wiki.test.tokens" in err and "'zebra'" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu(corpus, tmp_path, capsys):
    argv = [*train_args(corpus, tmp_path / "run"), "--device", "cuda"]
    assert main(argv) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_train_init_refuses_a_model_of_other_vocabulary_or_shape(corpus, tmp_path, capsys):
    saved = tmp_path / "saved"
    assert main(train_args(corpus, saved, "--no-eval")) == 0  # H=3, T=6 on this corpus
    other = write_word_corpus(tmp_path / "other", words=WORDS[:5])  # fewer word types
    cases = [
        (["--data-dir", str(other)], "vocab_size"),
        (["--data-dir", str(corpus), "--length", "5"], "--length 5 contradicts"),
        (["--data-dir", str(corpus), "--hidden-states", "4"], "--hidden-states 4 contradicts"),
        (["--data-dir", str(corpus), "--homogeneous"], "--homogeneous"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        argv = ["train", "--init", str(saved), "--device", "cpu", "--no-eval", "--out",
                str(tmp_path / "run"), *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("hmmlvd train: error:") and message in err, err
        assert "Traceback" not in err
    argv = ["train", "--init", str(tmp_path / "missing"), "--data-dir", str(corpus), "--out",
            str(tmp_path / "run")]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_init_starts_from_the_saved_parameters(corpus, tmp_path):
    saved = tmp_path / "saved"
    assert main(train_args(corpus, saved, "--no-eval")) == 0
    out = tmp_path / "zero"
    argv = ["train", "--init", str(saved), "--data-dir", str(corpus), "--epochs", "0",
            "--final-full-batch", "0", "--device", "cpu", "--no-eval", "--out", str(out)]
    assert main(argv) == 0
    before, after = HMM.from_pretrained(saved), HMM.from_pretrained(out)
    for name, p in before.parameters().items():
        assert torch.equal(after.parameters()[name], p), name


def test_results_show_ngram_baselines_on_the_same_tokens(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--max-eval-tokens", "40")) == 0
    printed = capsys.readouterr().out
    data = load_wikitext(corpus)
    results = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        stream = data.split(split)[:40]  # the baselines score the tokens the HMM was scored on
        for order, name in ((1, "unigram"), (2, "Kneser–Ney 2-gram"), (3, "Kneser–Ney 3-gram")):
            want = KneserNey(len(data.vocab), order).fit(data.train).score(stream).perplexity
            assert results["eval"][split]["baselines"][name] == pytest.approx(want)
            assert f"{want:.2f}" in printed and name in printed


def test_final_full_batch_flag_ends_with_full_batch_epochs(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--final-full-batch", "1", "--no-eval")) == 0
    history = json.loads((out / "results.json").read_text())["history"]
    assert [(row["step_size"], row["full_batch"]) for row in history] == [
        (0.5, False), (0.5, False), (1.0, True)]


def test_byte_order_mark_of_a_token_file_is_not_part_of_the_first_word(corpus, tmp_path):
    """A token file saved with a UTF-8 byte order mark trains the same vocabulary as without
    it: the mark does not make its first word a new (unknown) word."""
    plain = tmp_path / "plain"
    argv = ["train", "--hidden-states", "2", "--length", "4", "--epochs", "0",
            "--final-full-batch", "0", "--device", "cpu", "--no-eval"]
    assert main([*argv, "--data-dir", str(corpus), "--out", str(plain)]) == 0
    for split in ("train", "valid", "test"):
        path = corpus / f"wiki.{split}.tokens"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = tmp_path / "marked"
    assert main([*argv, "--data-dir", str(corpus), "--out", str(marked)]) == 0
    words = (marked / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert not any("\ufeff" in w for w in words)
    assert words == (plain / "vocab.txt").read_text(encoding="utf-8").splitlines()


def test_the_command_lines_take_their_em_defaults_from_the_configs():
    """One source of truth: ``hmmlvd train``/``lvd`` without EM flags run ``EMConfig()``
    (besides the command line's own checkpoint cadence), ``hmmlvd image train`` runs
    ``CIRCUIT_EM``."""
    import dataclasses

    from hmmlvd.cli import build_parser
    from hmmlvd.cli_flags import train_config_from
    from hmmlvd.cli_image import em_config, parse_image_args
    from hmmlvd.em.config import EMConfig
    from hmmlvd.pc.em import CIRCUIT_EM

    for command in ("train", "lvd"):
        args = build_parser().parse_args([command, "--out", "x"])
        got = train_config_from(args)
        assert got == dataclasses.replace(EMConfig(), checkpoint_every=args.checkpoint_every)
    args = parse_image_args(["train", "--model", "hclt", "--size", "4", "--out", "x"])
    assert em_config(args) == CIRCUIT_EM


def test_train_prints_its_memory_estimate_before_training(corpus, tmp_path, capsys):
    """The estimate of the run's own sizes, batch and E-step dtype is printed before EM."""
    from hmmlvd.data import load_wikitext
    from hmmlvd.hmm import HMMConfig
    from hmmlvd.hmm.memory import describe, training_estimate

    assert main(train_args(corpus, tmp_path / "run", "--no-eval", "--dtype", "float32")) == 0
    printed = capsys.readouterr().out
    config = HMMConfig(3, len(load_wikitext(corpus).vocab), 6)
    want = describe(training_estimate(config, 32, False, torch.float32, True), torch.float32)
    assert want in printed
    assert printed.index(want) < printed.index("training HMM(")
