"""scripts/bench_malloc.py: a tiny run on synthetic MNIST times the image-LVD EM step in two
child processes (malloc as is, and kept), prints one row per K and writes its section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_mnist import write_mnist

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_malloc.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tiny_run_prints_and_writes_a_row_per_size(tmp_path):
    data = write_mnist(tmp_path / "mnist")
    out = tmp_path / "results.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(data), "--sizes", "2",
                           "3", "--num-latents", "2", "--batch-size", "20", "--repeats", "1",
                           "--warmup", "1", "--tree-images", "100", "--write", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| K ")]
    assert [int(r[0]) for r in rows] == [2, 3]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0 and row[4].strip().endswith("x")
    text = out.read_text()
    assert "<!-- bench_malloc:begin -->" in text and "HMMLVD_MALLOPT=0" in text
