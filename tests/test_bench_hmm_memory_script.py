"""scripts/bench_hmm_memory.py on a tiny model: each kind runs in its own child process and
reports a real peak beside the library's estimate for the same sizes, recorded as a table."""

from __future__ import annotations

import torch
from script_loading import load_script

from hmmlvd.hmm import HMMConfig
from hmmlvd.hmm.memory import training_estimate


def test_tiny_run_reports_the_peak_beside_the_estimate(monkeypatch, tmp_path, capsys):
    script = load_script("bench_hmm_memory", monkeypatch)
    monkeypatch.setattr(script, "VOCAB", 40)
    monkeypatch.setattr(script, "LENGTH", 5)
    out = tmp_path / "results.md"
    assert script.main(["--hidden-states", "6", "--batch-size", "30", "--dtype", "float32",
                        "--threads", "1", "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in printed.splitlines() if line.startswith("| 6 |")]
    assert [r[2].strip() for r in rows] == ["mini-batch", "full-batch"]
    config = HMMConfig(6, 40, 5)
    for row, full in zip(rows, (False, True), strict=True):
        want = training_estimate(config, 30, full_batch=full, dtype=torch.float32,
                                 mini_batch=not full).total
        assert row[5].strip() == f"{want / 1e9:.2f} GB"
        assert float(row[6].split()[0]) > 0.05  # a real process's peak (torch alone > 50 MB)
    assert "<!-- bench_hmm_memory:begin -->" in out.read_text()
