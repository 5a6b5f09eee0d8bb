"""Interrupted training loses nothing: a `hmmlvd train` process stopped by Ctrl-C (SIGINT)
saves a checkpoint and exits 130 with a resume hint; one killed outright (SIGKILL) mid-epoch
resumes from its last checkpoint; both finish with the parameters of an uninterrupted run."""

from __future__ import annotations

import json
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


def train_args(corpus: Path, out: Path) -> list[str]:
    return ["train", "--data-dir", str(corpus), "--hidden-states", "4", "--length", "6",
            "--epochs", "8", "--batch-size", "16", "--step-size", "0.3", "--device", "cpu",
            "--checkpoint-every", "1", "--no-eval", "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> HMM:
    out = tmp_path_factory.mktemp("full")
    assert main(train_args(corpus, out)) == 0
    return HMM.from_pretrained(out)


def start_and_stop(corpus: Path, out: Path, sig: signal.Signals,
                   min_step: int = 5) -> subprocess.CompletedProcess:
    """Run `hmmlvd train` in a subprocess and send ``sig`` once it has checkpointed
    ``min_step`` steps (of about 210)."""
    proc = subprocess.Popen([sys.executable, "-m", "hmmlvd", *train_args(corpus, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
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
    for name, p in a.parameters().items():
        np.testing.assert_allclose(b.parameters()[name].numpy(), p.numpy(), atol=1e-6,
                                   err_msg=name)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same(corpus, tmp_path,
                                                                  uninterrupted):
    out = tmp_path / "run"
    stopped = start_and_stop(corpus, out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    folder = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    state = json.loads((folder / "train_state.json").read_text())
    assert state["epoch"] < 8  # stopped early, mid-run
    assert main([*train_args(corpus, out), "--resume"]) == 0
    assert_same_parameters(uninterrupted, HMM.from_pretrained(out))


def test_sigkill_mid_epoch_then_resume_finishes_the_same(corpus, tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = start_and_stop(corpus, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # the run never finished
    assert main([*train_args(corpus, out), "--resume"]) == 0
    assert_same_parameters(uninterrupted, HMM.from_pretrained(out))
