"""`hmmlvd lvd` killed outright (SIGKILL) in any stage before EM's first checkpoint — the
suffix embeddings, k-means, the closed-form initialisation — then run again with the same
command plus ``--resume`` (what a scheduler resubmitting a preempted job does): the run starts
over, reusing what the embedding cache kept, and ends with the parameters of an uninterrupted
run. A kill during EM resumes from its checkpoint (tests/test_interrupt.py).

The kill is a real SIGKILL that the process sends itself when the stage's function is first
called, so the files on disk are exactly those such a kill leaves."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from lvd_tiny import build_tiny_bert, write_tiny_wikitext

from hmmlvd import HMM
from hmmlvd.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTH = 5

#: Runs `hmmlvd` (argv[2:]) and SIGKILLs itself when the function argv[1] of
#: hmmlvd.lvd.text.distill (embed, kmeans_labels, mle_from_labels) is first called; for the
#: embeddings, at the encoder's second batch, the first batch written into the cache's store.
KILL_IN = """
import importlib, os, signal, sys
from hmmlvd.cli import main

distill = importlib.import_module("hmmlvd.lvd.text.distill")  # not the function `distill`

stage = sys.argv[1]
if stage == "embed":
    import hmmlvd.lvd.text.suffix as suffix
    calls, encode = [0], suffix.suffix_embeddings

    def killing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return encode(*args, **kwargs)

    suffix.suffix_embeddings = killing
else:
    def killing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(distill, stage, killing)
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvdkill")
    encoder = build_tiny_bert(root / "bert")
    data = write_tiny_wikitext(root / "wt", (40, 8, 8), words_per_line=6, seed=3)
    return root, encoder, data


def lvd_argv(setup, out, cache) -> list[str]:
    _, encoder, data = setup
    return ["lvd", "--data-dir", str(data), "--encoder", str(encoder), "--hidden-states", "3",
            "--length", str(LENGTH), "--epochs", "2", "--batch-size", "32", "--device", "cpu",
            "--cache-dir", str(cache), "--embed-batch-size", "16", "--kmeans-iters", "5",
            "--no-eval", "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(setup) -> HMM:
    root = setup[0]
    assert main(lvd_argv(setup, root / "full", root / "full-cache")) == 0
    return HMM.from_pretrained(root / "full")


@pytest.mark.parametrize("stage", ["embed", "kmeans_labels", "mle_from_labels"])
def test_sigkill_before_the_first_checkpoint_then_resume_ends_as_an_uninterrupted_run(
        setup, uninterrupted, tmp_path, capsys, stage):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = lvd_argv(setup, out, cache)
    killed = subprocess.run([sys.executable, "-c", KILL_IN, stage, *argv],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "nothing to resume: starting it over" in capsys.readouterr().out
    resumed = HMM.from_pretrained(out)
    for name, p in uninterrupted.parameters().items():
        np.testing.assert_allclose(resumed.parameters()[name].numpy(), p.numpy(), atol=1e-6,
                                   err_msg=name)


def test_resume_without_any_earlier_run_is_still_refused(setup, tmp_path, capsys):
    out = tmp_path / "never-ran"
    assert main([*lvd_argv(setup, out, tmp_path / "cache"), "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
