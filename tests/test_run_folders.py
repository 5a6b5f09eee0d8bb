"""A training run owns its output folder (--out) from start to end: another run started there
at any moment of it (data loading, the first and later epochs, the final save) is refused at
once in one line while the first finishes untouched; and a run that fails leaves the files
already in a folder it did not create as they were."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from word_corpus import write_word_corpus

import hmmlvd.hmm.em as hmm_em
import hmmlvd.pipelines.text as text_pipeline
from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.core.errors import DataError
from hmmlvd.core.lock import LOCK_FILE
from hmmlvd.data.images import ImageData
from hmmlvd.image import PatchCircuit
from hmmlvd.pipelines.image_models import load_image_model


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_word_corpus(tmp_path / "wt")


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """`hmmlvd train` for about a second: H=3, T=6, 2 mini-batch epochs of 13 batches."""
    return ["train", "--data-dir", str(corpus), "--hidden-states", "3", "--length", "6",
            "--epochs", "2", "--final-full-batch", "0", "--batch-size", "32",
            "--step-size", "0.5", "--device", "cpu", "--no-eval", "--out", str(out), *extra]


def run_in_another_process(argv: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """`hmmlvd <argv>` in a forked child process, started now (while the caller's run goes
    on): its exit code and what it wrote to stderr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report (code, stderr) through the pipe, never return
        code, err = 99, io.StringIO()
        try:
            os.close(read)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        finally:
            os.write(write, json.dumps([code, err.getvalue()]).encode())
            os._exit(0)
    os.close(write)
    deadline, received = time.monotonic() + timeout, b""
    while True:  # read until the child has exited (end of file), or give up
        ready, _, _ = select.select([read], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            raise AssertionError(f"the second run {argv[:2]} still runs after {timeout} s: it "
                                 "waits for the folder instead of being refused")
        chunk = os.read(read, 65536)
        if not chunk:
            break
        received += chunk
    os.close(read)
    os.waitpid(pid, 0)
    code, err = json.loads(received)
    return code, err


def probe_at(monkeypatch, owner: object, name: str, calls: set[int], argv: list[str],
             results: list[tuple[str, int, str]]) -> None:
    """Wrap ``owner.name`` so that its calls numbered ``calls`` (from 1) first start ``argv``
    in another process, recording (where, exit code, stderr) in ``results``."""
    real = getattr(owner, name)
    count = [0]

    def probed(*args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            results.append((f"{name} call {count[0]}", *run_in_another_process(argv)))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, probed)


def assert_refused_while_running(results, out: Path, command: str, expected: int) -> None:
    """Every probe was refused at once, in one line naming the folder and this process."""
    assert len(results) == expected, [r[0] for r in results]
    for where, code, err in results:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (where, code, err)
        assert lines[0].startswith(f"hmmlvd {command}: error: "), (where, err)
        assert f"the output folder {out} is in use by process {os.getpid()}" in lines[0], \
            (where, err)


def test_second_text_run_is_refused_at_every_point_of_the_first(corpus, tmp_path,
                                                                 monkeypatch):
    """Another `hmmlvd train` on the same --out, started while the first run loads its data,
    during E-steps of its first and second epochs and during its final save, fails at once
    with one line naming the folder and the running process; the first run then finishes
    with the very model an undisturbed run trains. Guards against the folder's lock being
    released before the run ends (e.g. right after it is taken), which would let two runs
    write checkpoints and models into one folder."""
    reference = tmp_path / "reference"
    assert main(train_args(corpus, reference)) == 0
    out = tmp_path / "run"
    second = train_args(corpus, out, "--hidden-states", "2")
    results: list[tuple[str, int, str]] = []
    probe_at(monkeypatch, text_pipeline, "load_wikitext", {1}, second, results)
    probe_at(monkeypatch, hmm_em, "chunk_counts", {1, 15}, second, results)  # epochs 1, 2
    probe_at(monkeypatch, HMM, "save_pretrained", {1}, second, results)
    assert main(train_args(corpus, out)) == 0
    assert_refused_while_running(results, out, "train", 4)
    assert json.loads((out / "results.json").read_text())["model"]["num_states"] == 3
    want, got = HMM.from_pretrained(reference), HMM.from_pretrained(out)
    for name, p in want.parameters().items():
        torch.testing.assert_close(got.parameters()[name], p, rtol=0, atol=1e-6)


def tiny_images(monkeypatch) -> None:
    """`hmmlvd image` reads 40 random 4x4 grey images instead of a dataset."""
    import hmmlvd.pipelines.image as image_pipeline  # where image training loads its data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 4, 4, 1), dtype=np.uint8)
    labels = np.zeros(40, np.int64)

    def load_images(name, folder, *args, **kwargs):
        return ImageData(images, labels, images[:8], labels[:8], images[:8], labels[:8])

    monkeypatch.setattr(image_pipeline, "load_images", load_images)


def test_second_image_run_is_refused_at_every_point_of_the_first(tmp_path, monkeypatch):
    """The same for `hmmlvd image train --model lvd`: refused while it loads its data, during
    LVD stage (a), during stage (c) and during the final save; the first run's model is
    saved complete."""
    tiny_images(monkeypatch)
    out = tmp_path / "lvd"

    def argv(size: str) -> list[str]:
        return ["image", "train", "--model", "lvd", "--size", size, "--patch", "2",
                "--context", "1", "--num-latents", "2", "--top-units", "2",
                "--feature-dim", "2", "--stage-a-epochs", "1", "--stage-b-epochs", "1",
                "--epochs", "1", "--batch-size", "16", "--tree-bins", "4", "--device", "cpu",
                "--quiet", "--no-eval", "--data-dir", str(tmp_path / "unused"),
                "--out", str(out)]

    import hmmlvd.pipelines.image as image_pipeline  # where image training loads its data

    results: list[tuple[str, int, str]] = []
    probe_at(monkeypatch, image_pipeline, "load_images", {1}, argv("3"), results)
    for name in ("group_accumulate", "accumulate_counts"):  # stages (a) and (c)
        probe_at(monkeypatch, PatchCircuit, name, {1}, argv("3"), results)
    probe_at(monkeypatch, image_pipeline, "save_image_model", {1}, argv("3"), results)
    assert main(argv("2")) == 0
    assert_refused_while_running(results, out, "image", 4)
    model = load_image_model(out)[0]
    assert isinstance(model, PatchCircuit) and model.parts.num_units == 2
    assert json.loads((out / "results.json").read_text())["size"] == 2


# ----- a failing run in a folder that was there ----------------------------------------------
def users_files(out: Path) -> dict[str, bytes]:
    """Put a user's file and a subfolder with a file into ``out``; returns what they hold."""
    (out / "mine").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's notes\n")
    (out / "mine" / "data.csv").write_text("a,b\n1,2\n")
    return contents(out)


def contents(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` (but the lock file) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def test_failed_runs_leave_the_files_of_an_existing_out_untouched(corpus, tmp_path, capsys,
                                                                  monkeypatch):
    """A run that fails on data it cannot load, on a bad flag value, or in the middle of
    training, in an --out that already held the user's files: one-line error, and the folder
    still holds exactly those files (a run may only remove a folder it created itself and left
    empty). Guards against the clean-up of a failed run deleting the user's folder."""
    out = tmp_path / "run"
    before = users_files(out)

    def fails(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
        assert last.startswith("hmmlvd train: error: ") and message in last, last

    fails(train_args(tmp_path / "no-such-corpus", out), "no-such-corpus")
    fails(train_args(corpus, out, "--epochs", "-1"), "--epochs must be >= 0")

    def fail(*args, **kwargs):
        raise DataError("the windows are bad")

    monkeypatch.setattr(hmm_em, "chunk_counts", fail)
    fails(train_args(corpus, out), "the windows are bad")
    assert contents(out) == before
    fresh = tmp_path / "fresh"  # a folder the failed run created itself is removed again
    assert main(train_args(corpus, fresh)) == 2
    assert not fresh.exists()
