"""Reliability of outputs: output folders, checkpoints, resume and signals.

An output folder reused from a longer run, two runs on one folder, a hand-edited vocab.txt,
``--resume`` with other settings or another command, an output path that is a file or cannot be
written, SIGTERM, ``--epochs 0``, temporary files left by a kill, file permissions under the
umask, and saving a model onto a file. Each test failed before the fix it checks."""

from __future__ import annotations

import importlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_hmm_checkpoint, signal_during_e_step
from word_corpus import write_word_corpus

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.core.atomic import atomic_write_text
from hmmlvd.core.errors import CheckpointError
from hmmlvd.data import Vocabulary
from hmmlvd.em import Progress
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import load_checkpoint

train_module = importlib.import_module("hmmlvd.hmm.train")
checkpoints_module = importlib.import_module("hmmlvd.em.checkpoints")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A WikiText-style folder with random lines over 11 words."""
    return write_word_corpus(tmp_path / "wt")


def train_args(corpus: Path, out: Path, *extra: str, command: str = "train") -> list[str]:
    """A `hmmlvd train` (or lvd) command line that runs in a second: H=3, T=6, 2 epochs."""
    return [command, "--data-dir", str(corpus), "--hidden-states", "3", "--length", "6",
            "--epochs", "2", "--final-full-batch", "0",
            "--batch-size", "32", "--step-size", "0.5", "--device", "cpu",
            "--no-eval", "--out", str(out), *extra]


def one_line_error(err: str, command: str = "train") -> str:
    """The single `hmmlvd <command>: error: ...` line of ``err`` (asserts there is no more)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hmmlvd {command}: error: "), err
    return lines[0]


def tiny_hmm(seed: int = 0) -> HMM:
    return HMM(2, 4, 3, seed=seed, vocab=Vocabulary(["a", "b", "c", "d"]))


# ----- 1. an output folder reused from an earlier, longer run ---------------------------------
def test_reused_out_rotation_keeps_the_new_runs_checkpoints(corpus, tmp_path, capsys):
    """A longer run left ckpt-000000NN folders with lower numbers; the new, shorter run in
    the same --out must keep its own newest checkpoints (rotation deleted each one right after
    writing it, leaving `latest` pointing at a missing folder), and never delete the old run's
    folders: it did not write them."""
    out = tmp_path / "run"
    long_run = train_args(corpus, out, "--checkpoint-every", "1", "--epochs", "4")
    assert main(long_run) == 0
    old = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*"))
    assert len(old) == 2
    short = train_args(corpus, out, "--checkpoint-every", "1", "--epochs", "1",
                       "--hidden-states", "2")
    assert main(short) == 0
    root = out / "checkpoints"
    latest = (root / "latest").read_text().strip()
    assert (root / latest / "checkpoint.json").is_file(), sorted(os.listdir(root))
    hmm, _, checkpoints = load_checkpoint(out)
    assert hmm.num_states == 2 and checkpoints.progress.epoch == 1
    for name in old:  # the longer run's checkpoints are not this run's to delete
        assert (root / name / "checkpoint.json").is_file(), name
    new = [p.name for p in root.glob("ckpt-*") if p.name not in old]
    assert len(new) == 2, new
    capsys.readouterr()
    assert main([*short, "--resume"]) == 0


def test_rotation_orders_checkpoints_by_serial_number_not_by_name(tmp_path):
    """ckpt-100000000 sorts before ckpt-99999999 by name; the next serial after 99999999 is
    100000000, and the older one must go."""
    config = EMConfig(batch_size=2, keep_checkpoints=1)
    root = tmp_path / "checkpoints"
    first = save_hmm_checkpoint(tiny_hmm(), config, Progress(step=1), tmp_path, "mine")
    first.rename(root / "ckpt-99999999")
    (root / "latest").write_text("ckpt-99999999\n")
    save_hmm_checkpoint(tiny_hmm(1), config, Progress(step=2), tmp_path, "mine")
    assert sorted(p.name for p in root.glob("ckpt-*")) == ["ckpt-100000000"]
    assert load_checkpoint(tmp_path)[2].progress.step == 2


def test_rotation_never_deletes_checkpoints_of_another_run(tmp_path):
    """Checkpoints in --out that another run wrote (another run id) are never rotated away."""
    config = EMConfig(batch_size=2, keep_checkpoints=1)
    save_hmm_checkpoint(tiny_hmm(), config, Progress(step=50), tmp_path, "other")
    for step in (1, 2, 3):
        save_hmm_checkpoint(tiny_hmm(step), config, Progress(step=step), tmp_path, "mine")
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("ckpt-*")) == ["ckpt-00000001", "ckpt-00000004"]
    assert load_checkpoint(tmp_path)[2].progress.step == 3


# ----- 3. two runs on the same --out at once --------------------------------------------------
LOCK_HOLDER = """
import sys
from pathlib import Path
from hmmlvd.core.lock import output_lock
from hmmlvd.em.config import EMConfig
with output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_second_run_on_a_locked_out_fails_at_once_naming_the_folder_and_process(
        corpus, tmp_path, capsys, monkeypatch):
    """It fails at once: it neither waits for the lock nor loads the data."""
    import hmmlvd.pipelines.text as cli  # where the text pipeline loads its data

    loads = []
    real_load = cli.load_wikitext

    def load_wikitext(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cli, "load_wikitext", load_wikitext)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(train_args(corpus, out)) == 2
        assert loads == []  # refused before any work: no data loaded, nothing trained
        assert holder.poll() is None  # and while the holder still held the lock
        line = one_line_error(capsys.readouterr().err)
        assert str(out) in line and f"process {holder.pid}" in line, line
        assert not (out / "model.safetensors").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(train_args(corpus, out)) == 0  # free again once the holder is gone


def test_lock_is_exclusive_between_file_descriptors(tmp_path):
    from hmmlvd.core.lock import FolderLockedError, output_lock

    with (output_lock(tmp_path), pytest.raises(FolderLockedError, match=str(os.getpid())),
          output_lock(tmp_path)):
        pass
    with output_lock(tmp_path):  # released on exit
        pass


# ----- 5. vocab.txt edited by hand -------------------------------------------------------------
def test_swapped_vocab_lines_are_refused(tmp_path):
    folder = tmp_path / "model"
    tiny_hmm().save_pretrained(folder)
    assert "vocab_sha256" in json.loads((folder / "config.json").read_text())
    words = (folder / "vocab.txt").read_text().splitlines()
    words[0], words[1] = words[1], words[0]
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in words))
    with pytest.raises(CheckpointError, match=r"vocab\.txt does not match"):
        HMM.from_pretrained(folder)


def test_checkpoints_without_a_vocab_digest_still_load(tmp_path):
    folder = tmp_path / "model"
    tiny_hmm().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["vocab_sha256"]  # as written before the digest existed
    (folder / "config.json").write_text(json.dumps(config))
    assert HMM.from_pretrained(folder).vocab == tiny_hmm().vocab


# ----- --resume checks what the checkpoint was trained on --------------------------------------
@pytest.mark.parametrize("change, message", [
    (["--hidden-states", "4"], "--hidden-states 4, but the checkpoint"),
    (["--homogeneous"], "--homogeneous, but the checkpoint"),
    (["--max-windows", "20"], "--max-windows 20, but the checkpoint"),
    (["--length", "5"], "--length 5, but the checkpoint"),
])
def test_resume_refuses_other_model_or_window_settings(corpus, tmp_path, capsys, change,
                                                       message):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--checkpoint-every", "1")) == 0
    capsys.readouterr()
    assert main([*train_args(corpus, out, "--checkpoint-every", "1"), *change, "--resume"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert message in line and str(out) in line, line


def test_lvd_resume_refuses_a_folder_made_by_train(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out)) == 0
    capsys.readouterr()
    assert main([*train_args(corpus, out, command="lvd"), "--resume"]) == 2
    line = one_line_error(capsys.readouterr().err, "lvd")
    assert "made by `hmmlvd train`, not `hmmlvd lvd`" in line, line


def test_resume_refuses_other_training_data_of_the_same_vocabulary(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out)) == 0
    train_file = corpus / "wiki.train.tokens"
    lines = train_file.read_text().splitlines()  # same words in the same first-seen order
    train_file.write_text("\n".join([*lines, lines[0]]) + "\n")  # but another token stream
    capsys.readouterr()
    assert main([*train_args(corpus, out), "--resume"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "training data differs" in line, line


def test_checkpoints_record_what_they_were_trained_on(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--max-windows", "50", "--seed", "3")) == 0
    latest = (out / "checkpoints" / "latest").read_text().strip()
    record = json.loads((out / "checkpoints" / latest / "checkpoint.json").read_text())
    trained_on = record["trained_on"]
    assert trained_on["command"] == "train"
    assert trained_on["hidden_states"] == 3 and trained_on["length"] == 6
    assert trained_on["homogeneous"] is False
    assert trained_on["max_windows"] == 50 and trained_on["seed"] == 3
    assert trained_on["num_windows"] == 50
    assert trained_on["data_sha256"].startswith("sha256:")
    assert json.loads((out / "results.json").read_text())["trained_on"] == trained_on


# ----- --out that is a file or cannot be written -------------------------------------------------
def test_out_that_is_a_file_fails_before_any_work(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("not a folder")
    assert main(train_args(corpus, out)) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert str(out) in line and "is a file" in line, line
    assert captured.out == ""  # nothing loaded or trained
    assert main(train_args(corpus, out / "below")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out) in line, line


def test_out_under_a_read_only_folder_fails_before_any_work(corpus, tmp_path, capsys,
                                                           monkeypatch):
    """A read-only folder, simulated: creating a folder or a file in it fails with EACCES, as
    the kernel answers a user without write permission (root ignores permission bits, so a
    chmod would not stop it, and CI runs as root)."""
    import errno
    import tempfile

    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdir, real_temporary_file = Path.mkdir, tempfile.TemporaryFile

    def mkdir(self, *args, **kwargs):
        if parent in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    def temporary_file(*args, **kwargs):
        folder = kwargs.get("dir")
        if folder is not None and Path(folder) == parent:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real_temporary_file(*args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    assert main(train_args(corpus, parent / "run")) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert str(parent / "run") in line and "Permission denied" in line, line
    assert captured.out == ""  # nothing loaded or trained
    assert not (parent / "run").exists()
    out = parent
    assert main(train_args(corpus, out)) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert "not writable" in line and str(out) in line, line
    assert captured.out == "" and list(out.iterdir()) == []


def test_unwritable_out_is_reported_before_any_work(corpus, tmp_path, capsys, monkeypatch):
    """The writability probe (root ignores permissions, so the failure is simulated)."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    out = tmp_path / "run"
    assert main(train_args(corpus, out)) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert "not writable" in line and str(out) in line and "Permission denied" in line, line
    assert captured.out == ""


# ----- SIGTERM ---------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_exits_143(corpus, tmp_path):
    out = tmp_path / "run"
    args = train_args(corpus, out, "--checkpoint-every", "1", "--epochs", "10",
                      "--batch-size", "8")
    proc = subprocess.Popen([sys.executable, "-m", "hmmlvd", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "checkpoints" / "latest"
    while proc.poll() is None:  # until its first checkpoint, or until it has ended
        if latest.is_file() and latest.read_text().strip():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    name = latest.read_text().strip()
    state = json.loads((out / "checkpoints" / name / "checkpoint.json").read_text())
    assert state["progress"]["epoch"] < 10
    assert main([*args, "--resume"]) == 0
    assert HMM.from_pretrained(out).num_states == 3


def test_sigterm_in_process_stops_training_like_ctrl_c(tmp_path, monkeypatch):
    """In the library: SIGTERM during train() stops after the batch, with a checkpoint."""
    from hmmlvd.data import TokenWindows

    windows = TokenWindows(torch.arange(200).remainder(4).numpy(), 3)
    hmm = HMM(2, 4, 3, seed=0)

    def unhandled(signum: int, frame: object) -> None:  # instead of killing pytest
        raise AssertionError("SIGTERM reached the handler outside train()")

    config = EMConfig(epochs=3, step_size=0.5, final_full_batch=0, batch_size=10)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        signal_during_e_step(monkeypatch, 3)
        with pytest.raises(train_module.TrainingInterrupted) as info:
            train_module.train(hmm, windows, config, out=tmp_path, progress=False)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # handler restored
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, previous)
    assert info.value.signal == signal.SIGTERM
    assert load_checkpoint(tmp_path)[2].progress.step == 3


# ----- --epochs 0, temporary files, permissions --------------------------------------------------
def test_epochs_zero_says_it_saves_the_initial_model(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--epochs", "0")) == 0
    printed = capsys.readouterr().out
    assert "no EM epochs: saving the initial model" in printed.splitlines()
    assert HMM.from_pretrained(out).num_states == 3


def test_temporary_files_of_a_killed_run_are_removed_on_start(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    step = out / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    left = [out / ".model.safetensors.hmmlvd-k2j4x9_a.tmp",
            step / ".model.safetensors.hmmlvd-0a1b2c3d.tmp",
            out / "checkpoints" / ".latest.hmmlvd-zz99yy88.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 1000)
    mine = out / "notes.tmp"
    mine.write_text("the user's own file")
    assert main(train_args(corpus, out)) == 0
    assert not [p for p in left if p.exists()]
    assert mine.read_text() == "the user's own file"
    assert "removed 3 temporary files" in capsys.readouterr().out


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_are_created_with_the_umasks_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello\n")
        tiny_hmm().save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    want = 0o666 & ~umask
    for path in (tmp_path / "a.txt", tmp_path / "model" / "model.safetensors",
                 tmp_path / "model" / "config.json", tmp_path / "model" / "vocab.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


# ----- saving onto a file ------------------------------------------------------------------------
def test_save_pretrained_onto_a_file_is_a_checkpoint_error(tmp_path):
    target = tmp_path / "model"
    target.write_text("a file")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        tiny_hmm().save_pretrained(target)
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        tiny_hmm().save_pretrained(target / "below")
    assert target.read_text() == "a file"


def test_save_circuit_onto_a_file_is_a_checkpoint_error(tmp_path):
    from hmmlvd.pc import Circuit, poon_domingos, save_circuit

    target = tmp_path / "circuit"
    target.write_text("a file")
    circuit = Circuit(poon_domingos(2, 2, delta=1), 2, num_categories=3, seed=0)
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        save_circuit(circuit, target)
    assert target.read_text() == "a file"


# ----- a disk that fills up while a checkpoint is written --------------------------------------
#: What safetensors raises when the disk is full (its own exception type, not an OSError).
DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_disk_full_while_checkpointing_is_one_line_and_the_last_checkpoint_resumes(
        corpus, tmp_path, capsys, monkeypatch):
    """The third checkpoint's tensors cannot be written: one line naming the folder and what
    to do (no traceback), no incomplete checkpoint folder left, `latest` still names the second,
    and --resume from it ends as an uninterrupted run."""
    from safetensors import SafetensorError

    import hmmlvd.core.persist as persist_module

    args = train_args(corpus, tmp_path / "run", "--checkpoint-every", "1")
    assert main(train_args(corpus, tmp_path / "whole")) == 0
    real_save_file, calls = persist_module.save_file, []

    def fill_up(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            raise SafetensorError(DISK_FULL)
        return real_save_file(tensors, path)

    monkeypatch.setattr(persist_module, "save_file", fill_up)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err  # the progress bar, then the error
    line = one_line_error(err.strip().rsplit("\n", 1)[-1])
    assert "Traceback" not in err, err
    root = out / "checkpoints"
    assert f"cannot save into {root / 'ckpt-00000003'}: No space left on device" in line, line
    assert "free space" in line, line
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-00000001", "ckpt-00000002",
                                                      "latest"]
    assert (root / "latest").read_text().strip() == "ckpt-00000002"
    assert not (out / "config.json").exists()
    monkeypatch.setattr(persist_module, "save_file", real_save_file)
    assert main([*args, "--resume"]) == 0
    whole, resumed = HMM.from_pretrained(tmp_path / "whole"), HMM.from_pretrained(out)
    for name, p in whole.parameters().items():
        torch.testing.assert_close(resumed.parameters()[name], p, rtol=0, atol=1e-6)


def test_disk_full_while_writing_a_checkpoints_state_removes_that_checkpoint(
        corpus, tmp_path, capsys, monkeypatch):
    """The third checkpoint's model files are written but its checkpoint.json is not (the
    disk fills up): one line naming the folder and what to do, that checkpoint folder is removed
    (no checkpoint without a state), `latest` still names the second, and --resume from it
    ends as an uninterrupted run."""
    import errno

    args = train_args(corpus, tmp_path / "run", "--checkpoint-every", "1")
    assert main(train_args(corpus, tmp_path / "whole")) == 0
    real_write, calls = checkpoints_module.atomic_write_json, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) == 3:
            assert (path.parent / "model.safetensors").is_file()  # the model files came first
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(checkpoints_module, "atomic_write_json", fill_up)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    line = one_line_error(err.strip().rsplit("\n", 1)[-1])
    assert "Traceback" not in err, err
    root = out / "checkpoints"
    assert f"cannot save into {root / 'ckpt-00000003'}: No space left on device; free space" \
        in line, line
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-00000001", "ckpt-00000002",
                                                      "latest"]
    assert (root / "latest").read_text().strip() == "ckpt-00000002"
    monkeypatch.setattr(checkpoints_module, "atomic_write_json", real_write)
    assert main([*args, "--resume"]) == 0
    whole, resumed = HMM.from_pretrained(tmp_path / "whole"), HMM.from_pretrained(out)
    for name, p in whole.parameters().items():
        torch.testing.assert_close(resumed.parameters()[name], p, rtol=0, atol=1e-6)


# ----- a new run in the --out of another run ----------------------------------------------------
def test_new_run_in_the_out_of_a_stopped_run_is_refused(corpus, tmp_path, capsys, monkeypatch):
    """Without --resume, a run in the folder of a stopped one would overwrite its `latest`,
    after which the stopped run could not be resumed: refused in one line, nothing changed;
    with --resume it finishes, and a new run may then reuse the finished run's folder."""
    real, calls = train_module.expected_counts, []

    def terminate_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    out = tmp_path / "run"
    args = train_args(corpus, out, "--checkpoint-every", "1")
    monkeypatch.setattr(train_module, "expected_counts", terminate_on_third)
    assert main(args) == 143
    monkeypatch.setattr(train_module, "expected_counts", real)
    latest = (out / "checkpoints" / "latest").read_text()
    capsys.readouterr()
    for command in ("train", "lvd"):
        argv = train_args(corpus, out, "--checkpoint-every", "1", command=command)
        assert main(argv) == 2
        line = one_line_error(capsys.readouterr().err, command)
        assert f"--out {out} holds an unfinished run" in line, line
        assert "continue it with --resume, or choose another --out" in line, line
        assert (out / "checkpoints" / "latest").read_text() == latest
    assert main([*args, "--resume"]) == 0
    assert main(train_args(corpus, out, "--hidden-states", "2")) == 0  # finished: reusable
    assert HMM.from_pretrained(out).num_states == 2


def files_in(folder: Path) -> list[str]:
    """Every file below ``folder`` with its contents, but the lock file a run leaves."""
    from hmmlvd.core.lock import LOCK_FILE

    return sorted(f"{p.relative_to(folder)}: {p.read_bytes()!r}" for p in folder.rglob("*")
                  if p.is_file() and p.name != LOCK_FILE)


def test_runs_of_the_other_kind_are_refused_in_each_others_out(corpus, tmp_path, capsys):
    """A text run in the folder of an image run (finished or stopped), or an image run in
    the folder of a text run: one line saying what the folder holds; nothing changed."""
    from hmmlvd.pc import Circuit, poon_domingos
    from hmmlvd.pipelines.image_models import save_image_model

    image = tmp_path / "image"
    circuit = Circuit(poon_domingos(2, 3, delta=1), 2, num_categories=256, seed=0)
    save_image_model(circuit, image, {"image_shape": [2, 3, 1]})
    stopped = tmp_path / "stopped-image"  # the checkpoints of a stopped image run
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "latest").write_text("em-00000001\n")
    for out in (image, stopped):
        for extra in ([], ["--resume"]):
            before = files_in(out)
            assert main(train_args(corpus, out, *extra)) == 2
            line = one_line_error(capsys.readouterr().err)
            assert f"--out {out} holds an image circuit run (`hmmlvd image train`), not a " \
                   "text HMM run" in line, line
            assert "choose another --out" in line, line
            assert files_in(out) == before
    text = tmp_path / "text"
    assert main(train_args(corpus, text)) == 0
    capsys.readouterr()
    assert main(["image", "train", "--model", "pd", "--size", "2", "--data-dir",
                 str(tmp_path / "no-images"), "--out", str(text)]) == 2
    line = one_line_error(capsys.readouterr().err, "image")
    assert f"--out {text} holds a text HMM run (`hmmlvd train` or `hmmlvd lvd`), not an " \
           "image circuit run" in line, line
