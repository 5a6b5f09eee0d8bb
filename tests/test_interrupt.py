"""Interrupted training loses nothing: a `hmmlvd train` process stopped by Ctrl-C (SIGINT) or
SIGTERM saves a checkpoint and exits 130 (143) with a resume hint; one killed outright
(SIGKILL) mid-epoch resumes from its last checkpoint; both finish with the parameters of an
uninterrupted run.

The Ctrl-C run writes no periodic checkpoints (``--checkpoint-every 0``) and is stopped in
its first epoch, before any epoch-end checkpoint: the stop handler's checkpoint is the only
one there is, so the resume check fails if the handler saves nothing (or the wrong step)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hmmlvd import HMM
from hmmlvd.cli import main

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("wt")
    for split, lines in (("train", 60), ("valid", 5), ("test", 5)):
        text = "".join(" ".join(rng.choice(WORDS, size=7)) + "\n" for _ in range(lines))
        (folder / f"wiki.{split}.tokens").write_text(text)
    return folder


def train_args(corpus: Path, out: Path, checkpoint_every: int = 0) -> list[str]:
    return ["train", "--data-dir", str(corpus), "--hidden-states", "4", "--length", "6",
            "--epochs", "8", "--batch-size", "16", "--step-size", "0.3", "--device", "cpu",
            "--checkpoint-every", str(checkpoint_every), "--no-eval", "--out", str(out)]


#: The step (a batch of epoch 1, of about 30) after which the Ctrl-C run stops.
STOP_STEP = 10


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> HMM:
    out = tmp_path_factory.mktemp("full")
    assert main(train_args(corpus, out)) == 0
    latest = (out / "checkpoints" / "latest").read_text().strip()
    state = json.loads((out / "checkpoints" / latest / "checkpoint.json").read_text())
    state = state["progress"]
    assert state["step"] // state["epoch"] > STOP_STEP  # batches per epoch: STOP_STEP is mid-epoch
    return HMM.from_pretrained(out)


#: Runs `hmmlvd train` (argv[3:]) and sends this process signal argv[2] while the training
#: loop takes its argv[1]-th batch (counted over every TokenWindows.batches call): the signal
#: arrives mid-batch, as a Ctrl-C would, and training stops after that batch.
SIGNAL_AT_BATCH = """
import os, sys
from hmmlvd.cli import main
from hmmlvd.data import TokenWindows

at, sig, taken = int(sys.argv[1]), int(sys.argv[2]), [0]
batches = TokenWindows.batches

def signalling(self, *args, **kwargs):
    for batch in batches(self, *args, **kwargs):
        taken[0] += 1
        if taken[0] == at:
            os.kill(os.getpid(), sig)
        yield batch

TokenWindows.batches = signalling
sys.exit(main(sys.argv[3:]))
"""


def run_with_signal_at(corpus: Path, out: Path, sig: signal.Signals,
                       batch: int) -> subprocess.CompletedProcess:
    """`hmmlvd train` in a subprocess that receives ``sig`` during its ``batch``-th batch."""
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_BATCH, str(batch), str(int(sig)),
                           *train_args(corpus, out)],
                          capture_output=True, text=True, timeout=300)


def start_and_stop(corpus: Path, out: Path, sig: signal.Signals,
                   min_step: int = 5) -> subprocess.CompletedProcess:
    """Run `hmmlvd train` (a checkpoint every step) in a subprocess and send ``sig`` once it
    has checkpointed ``min_step`` steps (of about 240)."""
    proc = subprocess.Popen([sys.executable, "-m", "hmmlvd",
                             *train_args(corpus, out, checkpoint_every=1)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "checkpoints" / "latest"
    while proc.poll() is None:  # until it has checkpointed min_step steps, or has ended
        if latest.is_file():
            name = latest.read_text().strip()
            if name and int(name.split("-")[1]) >= min_step:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_same_parameters(a: HMM, b: HMM) -> None:
    """Equal to float32 rounding over the run's ~240 M-steps: a run that checkpoints (or
    resumes) reads its emission table materialised, one that does not keeps it scaled, so the
    last bits drift apart (measured up to 2e-6). Another batch order moves entries by up to
    0.67 here, a step size off by 1e-4 by 1.5e-4."""
    for name, p in a.parameters().items():
        np.testing.assert_allclose(b.parameters()[name].numpy(), p.numpy(), atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize(("sig", "code", "by"), [(signal.SIGINT, 130, ""),
                                                  (signal.SIGTERM, 143, " by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same(corpus, tmp_path,
                                                                  uninterrupted, sig, code, by):
    out = tmp_path / "run"
    stopped = run_with_signal_at(corpus, out, sig, STOP_STEP)
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr
    step = "ckpt-00000001"
    said = re.search(rf"training interrupted{by} at epoch 1, batch {STOP_STEP}; checkpoint "
                     rf"saved in (.+)\. Resume with the same command plus --resume",
                     stopped.stderr)
    assert said, stopped.stderr
    assert Path(said[1]) == out / "checkpoints" / step
    # no periodic and no epoch-end checkpoint yet: the stop handler wrote the only one, at the
    # interrupted step, and `latest` names it
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [step, "latest"]
    assert (out / "checkpoints" / "latest").read_text().strip() == step
    state = json.loads((out / "checkpoints" / step / "checkpoint.json").read_text())["progress"]
    assert (state["epoch"], state["batch"], state["step"]) == (0, STOP_STEP, STOP_STEP)
    assert main([*train_args(corpus, out), "--resume"]) == 0
    assert_same_parameters(uninterrupted, HMM.from_pretrained(out))


def test_sigkill_mid_epoch_then_resume_finishes_the_same(corpus, tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = start_and_stop(corpus, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # the run never finished
    assert main([*train_args(corpus, out, checkpoint_every=1), "--resume"]) == 0
    assert_same_parameters(uninterrupted, HMM.from_pretrained(out))
