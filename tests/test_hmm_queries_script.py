"""scripts/hmm_queries.py on a tiny model and corpus: the reported hidden-word perplexities
equal an independent computation from full-window likelihoods (the infill distribution as
p(x with x_t = w) normalised over w; the left-side one as p(x_1..x_t) / p(x_1..x_{t-1})), and
every constrained sample contains its keywords."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from conftest import peaked_hmm
from script_loading import load_script
from word_corpus import write_word_corpus

from hmmlvd.data import TokenWindows, load_wikitext


def test_tiny_run_matches_likelihood_ratios(monkeypatch, tmp_path, capsys):
    script = load_script("hmm_queries", monkeypatch)
    monkeypatch.setattr(script, "FREQUENT", 2)  # a small vocabulary keeps few keyword words
    corpus = write_word_corpus(tmp_path / "wt")
    data = load_wikitext(corpus)
    hmm = peaked_hmm(3, len(data.vocab), 4, seed=31, sharpness=1.0, vocab=data.vocab)
    hmm.save_pretrained(tmp_path / "m")
    out = tmp_path / "results.md"
    assert script.main(["--model", str(tmp_path / "m"), "--data-dir", str(corpus),
                        "--windows", "12", "--pairs", "3", "--samples", "4", "--device", "cpu",
                        "--write", str(out)]) == 0
    printed = capsys.readouterr().out

    x, hidden = script.hidden_words(TokenWindows(data.test, 4), 12, 0)
    both, left = [], []
    for row, t in zip(x, hidden.tolist(), strict=True):
        filled = row.repeat(hmm.vocab_size, 1)
        filled[:, t] = torch.arange(hmm.vocab_size)
        joint = hmm.log_likelihood(filled).double()
        both.append((joint[row[t]] - torch.logsumexp(joint, 0)).item())
        before = hmm.log_likelihood(row[None, :t])[0].item() if t else 0.0
        left.append(hmm.log_likelihood(row[None, :t + 1])[0].item() - before)

    def reported(name: str) -> float:
        line = next(v for v in printed.splitlines() if v.startswith(f"| {name}"))
        return float(line.split("|")[2])

    assert reported("HMM infill") == round(math.exp(-np.mean(both)), 1)
    assert reported("HMM next token") == round(math.exp(-np.mean(left)), 1)
    assert "100% of all samples contain both keywords" in printed
    rows = re.findall(r"\| (\w+), (\w+) \| [0-9.e-]+ \| (\d+)/(\d+) \|", printed)
    assert rows and all(ok == total for _, _, ok, total in rows)
    assert "<!-- hmm_queries:begin -->" in out.read_text()
