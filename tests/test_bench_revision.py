"""benchlib's EM step of another revision, timed in a child process: the child imports
the package it is given (not the one on the caller's path) and computes what this process
computes on the same circuit and batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from script_loading import load_script

import hmmlvd
from hmmlvd.core.errors import DataError
from hmmlvd.pc import Circuit, em_step, poon_domingos

ROOT = Path(hmmlvd.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def bench(monkeypatch):
    """scripts/benchlib.py, imported as the benchmark scripts import it."""
    global em_step_at_revision, export_revision
    module = load_script("benchlib", monkeypatch)
    em_step_at_revision, export_revision = module.em_step_at_revision, module.export_revision


def test_the_child_computes_the_same_em_steps_as_this_process():
    graph = poon_domingos(4, 4, delta=2)
    settings = {"num_units": 3, "input": "categorical", "num_categories": 5, "seed": 4}
    batches = torch.randint(0, 5, (3, 16, 16), generator=torch.Generator().manual_seed(0))
    seconds, values = em_step_at_revision(ROOT, graph.to_dict(), settings, batches, 0.5,
                                          1e-3, repeats=2, warmup=2, threads=1,
                                          device=torch.device("cpu"))
    circuit = Circuit(graph, **settings)
    here = [em_step(circuit, batches[i % 3], 0.5, 1e-3) for i in range(4)]
    assert seconds > 0
    assert values == pytest.approx(here, rel=1e-6)
    assert here[0] != pytest.approx(here[3], rel=1e-6)  # the steps changed the circuit


def test_a_folder_without_hmmlvd_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"failed|imported"):
        em_step_at_revision(tmp_path, poon_domingos(2, 2, delta=1).to_dict(),
                            {"num_units": 2, "input": "bernoulli"},
                            torch.zeros(1, 4, 4, dtype=torch.long), 1.0, 0.0, 1, 0, 1,
                            torch.device("cpu"))


def test_export_revision(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                      capture_output=True).returncode:
        pytest.skip("not a git clone")
    export_revision("HEAD", tmp_path)
    assert (tmp_path / "hmmlvd" / "__init__.py").is_file()
    with pytest.raises(DataError, match="no-such-revision"):
        export_revision("no-such-revision", tmp_path / "other")
