"""scripts/lvd_vs_random.py on a tiny corpus with a tiny random BERT: both initialisations are
trained and evaluated for every H, and the table, plot and results section are written."""

from __future__ import annotations

from lvd_tiny import build_tiny_bert, write_tiny_wikitext
from script_loading import load_script


def test_script_writes_table_plot_and_section(tmp_path, capsys, monkeypatch):
    data = write_tiny_wikitext(tmp_path / "wt", (30, 6, 6), words_per_line=5, seed=2)
    results = tmp_path / "docs" / "results.md"
    load_script("lvd_vs_random", monkeypatch).main([
        "--data-dir", str(data), "--hidden-states", "2", "3", "--max-windows", "100",
        "--length", "4", "--epochs", "1", "--phase2-epochs", "1", "--batch-size", "32",
        "--encoder", str(build_tiny_bert(tmp_path / "bert")), "--cache-dir",
        str(tmp_path / "cache"), "--kmeans-iters", "3", "--device", "cpu", "--write",
        str(results)])
    printed = capsys.readouterr().out
    for h in (2, 3):
        assert f"H={h}: test ppl random" in printed
        assert f"\n| {h} |" in printed
    assert (tmp_path / "docs" / "lvd_vs_random.png").stat().st_size > 0
    section = results.read_text()
    assert "<!-- lvd_vs_random:begin -->" in section and "| 3 |" in section
