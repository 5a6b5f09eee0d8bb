"""scripts/bench_gpu.py as a smoke test on CPU at a tiny size: both tables are printed, a size
over the memory limit is reported as not fitting with its estimated need, and PyJuice is "n/a"
with the reason. Nothing is written to docs/."""

from __future__ import annotations

import torch
from script_loading import load_script


def test_tiny_cpu_run_prints_both_tables(monkeypatch, capsys):
    bench = load_script("bench_gpu", monkeypatch)
    fits = bench.estimate_bytes(4, 50, 8, 8)
    too_big = bench.estimate_bytes(8, 50, 8, 8)
    assert fits < too_big
    limit_gib = (fits + too_big) / 2 / 2**30
    printed = bench.main(["--device", "cpu", "--hidden-states", "4", "8", "--vocab", "50",
                          "--length", "8", "--batch-size", "8", "--pyjuice-batch-size", "8",
                          "--repeats", "1", "--warmup", "0", "--square-size", "32",
                          "--memory-limit", str(limit_gib)])
    assert printed in capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 4 |")]
    assert len(rows) == 2 and " ms |" in rows[0] and "does not fit" not in rows[0]
    em_row_8 = next(line for line in printed.splitlines() if line.startswith("| 8 |"))
    assert "does not fit (needs ~" in em_row_8
    assert "n/a (PyJuice needs a CUDA GPU)" in rows[1]
    assert "fp32" in printed and "bf16" in printed


def test_estimate_and_oom_detection(monkeypatch):
    bench = load_script("bench_gpu", monkeypatch)
    # H=4096, V=33,278, T=32, B=512: the emission table alone is 32*33278*4096 floats.
    est = bench.estimate_bytes(4096, 33278, 32, 512)
    assert 4 * 32 * 33278 * 4096 < est < 30 * 2**30
    assert bench.estimate_bytes(64, 100, 8, 16, homogeneous=True) < bench.estimate_bytes(
        64, 100, 8, 16)
    assert bench.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert bench.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory"))
    assert not bench.is_oom(ValueError("out of memory"))
    assert not bench.is_oom(RuntimeError("shape mismatch"))
