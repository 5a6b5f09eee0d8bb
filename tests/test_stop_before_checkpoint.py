"""SIGTERM during the work before EM's first checkpoint (Chow–Liu trees, k-means, LVD stages
(a) and (b)) ends it after the current step, not after the whole stage: the process exits 143
with one line saying what it was doing and that nothing was saved, and the same command with
--resume starts the run over and finishes it.

Each run is a subprocess whose wrapper (below) counts the calls of one function of the stage
(a Chow–Liu block, a tree, a batch, a k-means position) and sends itself SIGTERM during one of
them: the count says how much work was done after the signal, without timing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_mnist import write_mnist

from hmmlvd.core.outdir import STOPPED_EARLY

#: Runs `hmmlvd` (argv[4:]) with argv[1] ("module:attribute" or "module:Class.method") wrapped:
#: each call appends a line to the file argv[3], and the argv[2]-th sends SIGTERM to this
#: process before doing its work.
SIGNAL_AT_CALL = """
import importlib, os, signal, sys
from hmmlvd.cli import main

target, at, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module, _, path = target.partition(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real, calls = getattr(owner, name), [0]

def counting(*args, **kwargs):
    calls[0] += 1
    with open(log, "a") as f:
        f.write("call\\n")
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

setattr(owner, name, counting)
sys.exit(main(sys.argv[4:]))
"""

TINY = ["--train-size", "100", "--eval-size", "100", "--epochs", "1", "--batch-size", "50",
        "--tree-images", "100", "--device", "cpu", "--quiet", "--no-eval"]
TINY_LVD = ["--num-latents", "2", "--top-units", "2", "--feature-dim", "4", "--patch", "14",
            "--context", "0", "--stage-a-epochs", "2", "--stage-b-epochs", "2"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"), train=5100, test=10)


def run(target: str, at: int, log: Path, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_CALL, target, str(at), str(log),
                           *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("model", "target", "doing", "resume"), [
    ("hclt", "hmmlvd.pc.structures.hclt:_block_information", "learning a Chow–Liu tree", True),
    ("lvd", "hmmlvd.lvd.cluster:_search", "clustering (k-means)", False),
    ("lvd", "hmmlvd.lvd.image.distill:learn_hclt", "learning a Chow–Liu tree", False),
    ("lvd", "hmmlvd.image.parts_em:PartsLearner.e_step", "running LVD stage a", False),
    ("lvd", "hmmlvd.pc.em:accumulate_counts", "running LVD stage b", True),
], ids=["chow-liu", "k-means", "lvd-trees", "stage-a", "stage-b"])
def test_sigterm_before_the_first_checkpoint_stops_after_the_current_step(
        mnist_dir, tmp_path, model, target, doing, resume):
    out = tmp_path / "run"
    argv = ["image", "train", "--model", model, "--size", "2", *TINY,
            *(TINY_LVD if model == "lvd" else []), "--data-dir", str(mnist_dir),
            "--out", str(out)]
    log = tmp_path / "calls.log"
    stopped = run(target, 1 if model == "lvd" else 2, log, argv)
    calls = len(log.read_text().splitlines())
    assert calls == (1 if model == "lvd" else 2), (calls, stopped.stderr)  # no step after it
    assert stopped.returncode == 143, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert lines[0].startswith("SIGTERM: stopping after the current step, usually within "
                               "seconds"), stopped.stderr
    assert lines[-1] == (f"hmmlvd image: stopped by SIGTERM while {doing}, before the first "
                         "checkpoint: nothing was saved. Run the same command again (with or "
                         "without --resume) to start over"), stopped.stderr
    assert not (out / "checkpoints").exists() and (out / STOPPED_EARLY).is_file()
    if resume:
        again = subprocess.run([sys.executable, "-m", "hmmlvd", *argv, "--resume"],
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "stopped before its first checkpoint, nothing to resume: starting it over" \
            in again.stdout
        assert (out / "model.safetensors").is_file() and (out / "results.json").is_file()
        assert not (out / STOPPED_EARLY).exists() and not (out / "checkpoints").exists()


def test_resume_in_a_folder_without_any_run_is_still_refused(mnist_dir, tmp_path):
    """Only a run stopped before its first checkpoint is started over by --resume: in a
    folder that never held a run, --resume is refused in one line."""
    out = tmp_path / "new"
    refused = subprocess.run([sys.executable, "-m", "hmmlvd", "image", "train", "--model", "hclt",
                              "--size", "2", *TINY, "--data-dir", str(mnist_dir), "--out",
                              str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("hmmlvd image: error: no checkpoint to resume "
                                             "from"), refused.stderr
