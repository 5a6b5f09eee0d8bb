"""scripts/bench_lvd.py on a tiny corpus with a tiny random BERT on the CPU: every pipeline row
(legacy float32, current float32, bfloat16 and auto) is timed and the results section written;
its legacy piece table differs from the current one only for a tokenizer that pads."""

from __future__ import annotations

from lvd_tiny import build_tiny_bert, tiny_vocab, write_tiny_wikitext
from script_loading import load_script

from hmmlvd.lvd import load_encoder
from hmmlvd.lvd.text.suffix import build_piece_table


def test_script_prints_rows_and_writes_section(tmp_path, capsys, monkeypatch):
    data = write_tiny_wikitext(tmp_path / "wt", (30, 6, 6), words_per_line=5, seed=2)
    results = tmp_path / "docs" / "results.md"
    load_script("bench_lvd", monkeypatch).main([
        "--data-dir", str(data), "--encoder", str(build_tiny_bert(tmp_path / "bert")),
        "--windows", "12", "--exact-windows", "3", "--length", "5", "--batch-size", "4",
        "--repeats", "1", "--dtypes", "float32", "bfloat16", "auto", "--device", "cpu",
        "--write", str(results)])
    printed = capsys.readouterr().out
    rows = [line.split(" | ") for line in printed.splitlines() if line.startswith("| ")]
    assert [tuple(r[:2]) for r in rows[:3]] == [("| legacy (before #16)", "float32"),
                                                ("| current", "float32"),
                                                ("| current", "bfloat16")]
    assert rows[3][1] in ("auto (bfloat16)", "auto (float32)")
    assert len({r[2] for r in rows[:4]}) == 1  # the same tokens per window in every row
    section = results.read_text()
    assert "<!-- bench_lvd:begin -->" in section and "| current | bfloat16 |" in section
    assert "vs legacy float32" in section and "| 1.0x |" in section


def test_legacy_table_differs_only_for_a_padding_tokenizer(tmp_path, monkeypatch):
    bench = load_script("bench_lvd", monkeypatch)
    tok = load_encoder(str(build_tiny_bert(tmp_path / "bert"))).tokenizer
    vocab = tiny_vocab()
    assert bench.legacy_piece_table(vocab, tok).digest() == build_piece_table(vocab, tok).digest()
    tok.backend_tokenizer.enable_padding(length=8, pad_id=tok.pad_token_id,
                                         pad_token=tok.pad_token)
    legacy = bench.legacy_piece_table(vocab, tok)
    assert (legacy.lengths == 4).all() and (legacy.pieces[:, 1:] == tok.pad_token_id).any()
    assert build_piece_table(vocab, tok).lengths.tolist() != legacy.lengths.tolist()
