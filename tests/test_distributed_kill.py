"""`hmmlvd train` on two ranks under ``torchrun`` with one rank killed outright (SIGKILL),
then run again with the same command plus ``--resume``: the launcher ends with an error instead
of waiting forever, the run folder keeps its last complete checkpoint (a checkpoint rank 0 was
writing when it died is never the one resumed), and the resumed run, on two ranks or on one,
ends with the parameters of an uninterrupted run in one process. Without torchrun, which stops
the other ranks when one dies, the surviving rank ends by itself, long before its collectives'
timeout, with a one-line error (as on a node whose launcher never learns of another node's
death).

Two kills: rank 0, the only rank that writes, in the middle of writing a checkpoint (after its
model files, before its state file); rank 1 as it takes a batch, while rank 0 computes its own
shard and then waits for rank 1's counts. The kill is a real SIGKILL the rank sends itself
(tests/dist_kill_worker.py), so the point is the same in every run.

The resumed parameters are compared with one process' within the tolerance of
:func:`dist_launch.close`: two ranks add up two shards' counts where one process adds up the
whole batch, so the two differ in their last bits."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch.distributed as dist
from dist_launch import close, launch_failed, torchrun, two_ranks
from word_corpus import write_word_corpus

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.em.checkpoints import STATE_FILE
from hmmlvd.hmm import load_checkpoint

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORKER = Path(__file__).with_name("dist_kill_worker.py")
WORDS = [f"w{i}" for i in range(45)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_word_corpus(tmp_path_factory.mktemp("killcorpus") / "corpus", WORDS)


def train_argv(corpus: Path, out: Path) -> list[str]:
    """Two epochs of 13 batches (408 windows), a checkpoint after every M-step."""
    return ["train", "--data-dir", str(corpus), "--hidden-states", "8", "--length", "6",
            "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--no-eval",
            "--checkpoint-every", "1", "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> HMM:
    """The oracle: the same command run to its end in one process."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(train_argv(corpus, out)) == 0
    return HMM.from_pretrained(out)


def was_killed(proc: subprocess.CompletedProcess, rank: int) -> bool:
    """Whether torchrun's failure report names ``rank`` as ended by SIGKILL (exit code -9)."""
    return re.search(rf"rank\s*: {rank} \(local_rank: {rank}\)\s*\n\s*exitcode\s*: -9 ",
                     proc.stderr) is not None


def launch_and_kill(corpus: Path, out: Path, rank: int, at: str) -> subprocess.CompletedProcess:
    """The two-rank run into ``out`` with ``rank`` killed at ``at`` (see dist_kill_worker);
    once more in an emptied ``out`` if the first launch failed before the kill (a port race).
    The subprocess timeout only guards against a launcher that would wait forever."""
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        proc = torchrun(WORKER, train_argv(corpus, out),
                        {"KILL_RANK": str(rank), "KILL_AT": at, "HMMLVD_DIST_TIMEOUT": "120"},
                        timeout=300)
        if was_killed(proc, rank) or not launch_failed(proc):
            break
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert was_killed(proc, rank), proc.stderr[-3000:]
    return proc


def last_complete_step(out: Path) -> int:
    """The M-step of the checkpoint ``--resume`` continues from (it must load)."""
    _, _, checkpoints = load_checkpoint(out)
    return checkpoints.progress.step


def test_writer_killed_while_writing_a_checkpoint_resumes_in_one_process(
        corpus, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    launch_and_kill(corpus, out, rank=0, at="save:4")
    assert not (out / "model.safetensors").exists()  # the run never finished
    # the fourth write died before its state file: the third checkpoint is the last complete
    assert last_complete_step(out) == 3
    newest = max((out / "checkpoints").glob("ckpt-*"))
    assert not (newest / STATE_FILE).exists() and (newest / "model.safetensors").exists()
    capsys.readouterr()
    assert main([*train_argv(corpus, out), "--resume"]) == 0
    assert "resuming from epoch 1, batch 3 (step 3)" in capsys.readouterr().out
    close(HMM.from_pretrained(out).parameters(), uninterrupted.parameters())


def test_rank_1_killed_mid_batch_resumes_on_two_ranks(corpus, uninterrupted, tmp_path):
    killed = tmp_path / "killed"
    launch_and_kill(corpus, killed, rank=1, at="batch:6")
    assert not (killed / "model.safetensors").exists()
    # rank 0 cannot finish step 6 without rank 1's counts: step 5's checkpoint is the last
    assert last_complete_step(killed) == 5
    for _ in range(2):  # each launch resumes a fresh copy of the killed run
        out = tmp_path / "resumed"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(killed, out)
        proc = torchrun(WORKER, [*train_argv(corpus, out), "--resume"],
                        {"KILL_RANK": "none", "KILL_AT": "none", "HMMLVD_DIST_TIMEOUT": "120"},
                        timeout=300)
        if proc.returncode == 0 or not launch_failed(proc):
            break
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "on 2 ranks" in proc.stdout
    assert "resuming from epoch 1, batch 5 (step 5)" in proc.stdout
    close(HMM.from_pretrained(out).parameters(), uninterrupted.parameters())


@pytest.mark.parametrize(("killed", "at", "last_step"), [(0, "save:4", 3), (1, "batch:6", 5)],
                         ids=["writer-killed", "rank-1-killed"])
def test_the_surviving_rank_ends_by_itself_with_one_line(corpus, tmp_path, killed, at,
                                                          last_step):
    """Two plain processes, so no launcher stops the survivor: it must notice the dead peer
    itself. Its collectives would time out after an hour; the 300 s subprocess timeout only
    guards against that wait."""
    out = tmp_path / "run"
    env = {"KILL_RANK": str(killed), "KILL_AT": at, "HMMLVD_DIST_TIMEOUT": "3600"}
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        ranks = two_ranks(WORKER, train_argv(corpus, out), env, timeout=300)
        if ranks[killed].returncode == -signal.SIGKILL or not any(map(launch_failed, ranks)):
            break
    assert ranks[killed].returncode == -signal.SIGKILL, ranks[killed].stderr[-3000:]
    survivor = ranks[1 - killed]
    assert survivor.returncode == 2, survivor.stderr[-3000:]
    assert "Traceback" not in survivor.stderr, survivor.stderr[-3000:]
    errors = [line for line in survivor.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"hmmlvd train: error: rank {1 - killed} lost contact with the "
                                "other ranks ("), errors[0]
    assert "--resume" in errors[0]
    assert not (out / "model.safetensors").exists()
    assert last_complete_step(out) == last_step  # the survivor wrote nothing after the death
