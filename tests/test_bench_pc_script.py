"""scripts/bench_pc.py: a tiny run on random 8x8 images prints one table row per (input,
structure, K) and writes its section; the FLOP count matches a hand count on tiny circuits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from script_loading import load_script

from hmmlvd.pc import Circuit, hclt_region_graph, poon_domingos

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_pc.py"


@pytest.fixture
def bench(monkeypatch):
    return load_script("bench_pc", monkeypatch)


def has_git_history() -> bool:
    """True when this checkout is a git clone whose HEAD ``git archive`` can export."""
    try:
        return subprocess.run(["git", "-C", str(SCRIPT.parent), "rev-parse", "HEAD"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def table_rows(printed: str) -> list[list[str]]:
    """Cells of the markdown table's body rows."""
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_tiny_run_prints_every_row(bench, tmp_path, capsys):
    """Every row, with the before columns timed at this checkout's HEAD (the plumbing of
    ``--before-revision``; any revision with the same API would do)."""
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nkept\n")
    before = (["--before-revision", "HEAD", "--rounds", "1"] if has_git_history()
              else ["--no-before"])
    bench.main(["--image-size", "8", "--sizes", "2", "3", "--batch-size", "16",
                "--random-data", "--device", "cpu", "--repeats", "1", "--warmup", "1",
                "--tree-images", "64", "--peak-size", "64", "--write", str(results), *before])
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (s, i, k) for i in ("categorical", "bernoulli") for s in ("PD", "HCLT")
        for k in ("2", "3")]
    for row in rows:
        nodes, parameters, step, epoch = (float(row[c].replace(",", "")) for c in (3, 4, 6, 11))
        assert nodes > 0 and parameters > 0 and step > 0
        if before[0] == "--before-revision":
            for time_column, ratio_column in ((7, 8), (9, 10)):
                earlier = float(row[time_column])
                assert earlier > 0
                assert float(row[ratio_column].removesuffix("x")) == pytest.approx(
                    earlier / step, rel=0.02, abs=0.006)  # printed to 2 decimals
        else:
            assert row[7:11] == ["-"] * 4
        assert epoch == pytest.approx(step * 60000 / 16, rel=0.01)  # both printed to 3 digits
        assert row[15] == ("n/a (no GPU)" if row[0] == "HCLT" else "-")
    assert "s/epoch (= step x 60000/16)" in printed
    assert "random" in printed and "0.8 s per epoch" in printed
    text = results.read_text()
    assert text.startswith("# Results\n\nkept\n")
    assert "<!-- bench_pc:begin -->" in text and "<!-- bench_pc:end -->" in text
    assert "| HCLT | bernoulli | 3 |" in text and "Command: `python" in text


def test_flops_match_a_hand_count(bench):
    # PD on a 2x2 image with delta 1: the root has 2 partitions (top/bottom, left/right) and
    # each of the 4 half-images 1 (into its 2 pixels): 6 binary partitions.
    graph = poon_domingos(2, 2, delta=1)
    assert len(graph.partitions) == 6
    b, k = 3, 2
    circuit = Circuit(graph, k, input="bernoulli", product="einsum")
    per_partition = 2 * b * k**3 + 2 * b * k**2  # 48 + 24
    flops = bench.circuit_flops(circuit, b)
    assert flops["forward"] == 6 * per_partition == 432
    assert flops["em_step"] == 3 * 432
    assert bench.contraction_shape(circuit) == (4, 2, 6)

    # HCLT on a star (0 with children 1, 2, 3): one partition with 3 non-first children, and
    # on a chain 0-1-2-3: three partitions with one each. Either way D - 1 = 3 edges.
    for tree in ([(0, 1), (0, 2), (0, 3)], [(0, 1), (1, 2), (2, 3)]):
        k = 5
        circuit = Circuit(hclt_region_graph(tree), k, input="bernoulli", product="hadamard")
        flops = bench.circuit_flops(circuit, b)
        assert flops["forward"] == 3 * 2 * b * k**2 == 450
        assert flops["em_step"] == 1350
        assert bench.contraction_shape(circuit) == (5, 5, 3)
