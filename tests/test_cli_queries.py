"""``hmmlvd decode``, ``hmmlvd infill`` and ``hmmlvd sample --keywords/--banned`` end to end on
a small saved model: what they print is what the library's queries compute, and bad input gets
one line naming the problem."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import peaked_hmm

from hmmlvd.cli import main
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.hmm import HMM
from hmmlvd.hmm.dfa import banned, keywords

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park"]


@pytest.fixture
def model_dir(tmp_path):
    vocab = Vocabulary(WORDS)
    hmm = peaked_hmm(4, len(WORDS), 6, seed=21, sharpness=1.0, vocab=vocab)
    hmm.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ids(words: str) -> torch.Tensor:
    return torch.tensor([[WORDS.index(w) for w in words.split()]])


def test_decode_prints_the_viterbi_path_and_posteriors(model_dir, capsys):
    code, out, _ = run(capsys, "decode", "--model", str(model_dir), "--text", "the cat sat on")
    assert code == 0
    hmm = HMM.from_pretrained(model_dir)
    path, score = hmm.decode(ids("the cat sat on"))
    post = hmm.predict_proba(ids("the cat sat on"))[0]
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [int(r[2]) for r in rows] == path[0].tolist()
    for t, r in enumerate(rows):
        assert float(r[3]) == pytest.approx(post[t, path[0, t]].item(), abs=6e-4)
    assert f"log p(text, path) = {score[0].item():.3f}" in out


def test_infill_prints_the_top_words_of_each_gap(model_dir, capsys):
    code, out, _ = run(capsys, "infill", "--model", str(model_dir), "--text",
                       "the ___ sat ___ a", "--top", "3", "--num-samples", "4")
    assert code == 0
    hmm = HMM.from_pretrained(model_dir)
    x = torch.tensor([[0, 0, 2, 0, 4]])
    mask = torch.tensor([[True, False, True, False, True]])
    values, top = hmm.infill_distribution(x, mask, top_k=3)
    for t in (1, 3):
        line = next(v for v in out.splitlines() if v.startswith(f"gap at word {t + 1}:"))
        listed = [part.split() for part in line.split(":", 1)[1].split(",")]
        assert [w for w, _ in listed] == [WORDS[i] for i in top[0, t].tolist()]
        for (_, p), want in zip(listed, values[0, t].tolist(), strict=True):
            assert float(p) == pytest.approx(want, abs=6e-4)
    samples = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert len(samples) == 4
    for row in samples:  # observed words kept, each gap filled with a word in brackets
        assert row[0] == "the" and row[2] == "sat" and row[4] == "a"
        assert all(re.fullmatch(r"\[\w+\]", row[i]) for i in (1, 3))


def test_sample_with_keywords_satisfies_them(model_dir, capsys):
    code, out, _ = run(capsys, "sample", "--model", str(model_dir), "--keywords", "dog,park",
                       "--ordered", "--num-samples", "20")
    assert code == 0
    lines = out.splitlines()
    hmm = HMM.from_pretrained(model_dir)
    dfa = keywords([WORDS.index("dog"), WORDS.index("park")], ordered=True)
    assert lines[0] == f"p(constraint) = {hmm.constraint_probability(dfa).item():.4g}"
    samples = [line.split() for line in lines[1:]]
    assert len(samples) == 20
    for words in samples:
        assert "dog" in words and "park" in words[words.index("dog") + 1:]


def test_sample_with_banned_words_and_a_prefix(model_dir, capsys):
    code, out, _ = run(capsys, "sample", "--model", str(model_dir), "--banned", "the,a",
                       "--keywords", "cat", "--prefix", "dog ran", "--num-samples", "10")
    assert code == 0
    hmm = HMM.from_pretrained(model_dir)
    dfa = keywords([WORDS.index("cat")]).intersect(banned([0, 4]))
    want = hmm.constraint_probability(dfa, torch.tensor([WORDS.index("dog"),
                                                         WORDS.index("ran")])).item()
    assert out.splitlines()[0] == f"p(constraint given the prefix) = {want:.4g}"
    for line in out.splitlines()[1:]:
        words = line.split()
        assert words[:2] == ["dog", "ran"] and "cat" in words
        assert "the" not in words and "a" not in words


@pytest.mark.parametrize(("argv", "message"), [
    (["decode", "--text", "the zebra and the yak"], "words 'zebra', 'yak' are not in"),
    (["infill", "--text", "the ___ of"], "word 'of' is not in"),
    (["infill", "--text", "the cat sat"], "has no gap"),
    (["decode", "--text", "the cat sat on a mat and"], "at most 6"),
    (["sample", "--keywords", "cat,unicorn"], "--keywords: word 'unicorn' is not in"),
    (["sample", "--keywords", "big cat"], "several words"),
    (["sample", "--ordered"], "--ordered needs --keywords"),
])
def test_bad_query_input_gets_one_line(model_dir, capsys, argv, message):
    code, _, err = run(capsys, argv[0], "--model", str(model_dir), *argv[1:])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"hmmlvd {argv[0]}: error: ")
    assert message in err


def test_an_impossible_constraint_is_refused_not_sampled(tmp_path, capsys):
    vocab = Vocabulary(WORDS)
    base = peaked_hmm(3, len(WORDS), 5, seed=22)
    emission = base.emission.clone()
    emission[:, WORDS.index("park")] = 0.0
    emission /= emission.sum(1, keepdim=True)
    HMM(3, len(WORDS), 5, initial=base.initial, transition=base.transition, emission=emission,
        vocab=vocab).save_pretrained(tmp_path / "m")
    code, _, err = run(capsys, "sample", "--model", str(tmp_path / "m"), "--keywords", "park")
    assert code == 2 and "probability 0" in err and err.count("\n") == 1
