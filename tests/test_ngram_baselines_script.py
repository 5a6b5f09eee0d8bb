"""scripts/ngram_baselines.py on a tiny corpus: the table holds the perplexities of the library's
n-gram models on every valid and test token, and --write records it."""

from __future__ import annotations

from script_loading import load_script
from word_corpus import write_word_corpus

from hmmlvd.data import load_wikitext
from hmmlvd.ngram import KneserNey


def test_script_prints_and_writes_the_baselines(tmp_path, capsys, monkeypatch):
    corpus = write_word_corpus(tmp_path / "wt")
    results = tmp_path / "results.md"
    load_script("ngram_baselines", monkeypatch).main(
        ["--data-dir", str(corpus), "--orders", "1", "3", "--write", str(results)])
    printed = capsys.readouterr().out
    data = load_wikitext(corpus)
    for order, name in ((1, "unigram"), (3, "Kneser–Ney 3-gram")):
        model = KneserNey(len(data.vocab), order).fit(data.train)
        row = f"| {name} | {model.score(data.valid).perplexity:.1f} | " \
              f"{model.score(data.test).perplexity:.1f} |"
        assert row in printed and row in results.read_text()
    assert "<!-- ngram_baselines:begin -->" in results.read_text()
