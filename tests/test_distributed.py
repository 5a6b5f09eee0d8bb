"""Data-parallel EM with torch.distributed on CPU (gloo), two processes: the parameters after
mini-batch and full-batch EM equal single-process EM on the same data and schedule; only rank 0
writes; checkpoints resume with another number of ranks; LVD's sharded embedding cache and
broadcast k-means labels; and the ``hmmlvd train`` command on two ranks end to end.

Every result is compared with one process (the oracle), never rank 0 with rank 1: the ranks
take rank 0's parameters at every epoch end, so their equality holds whatever the reduction
does. One ``torchrun --standalone --nproc-per-node 2 tests/dist_worker.py`` runs every
scenario."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dist_worker as w
import numpy as np
import pytest
import torch
import torch.distributed as dist
from dist_launch import close, launch_failed, torchrun
from safetensors.torch import load_file
from word_corpus import write_word_corpus

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.core import distributed
from hmmlvd.hmm import load_checkpoint, train

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

MID_STEP = 4  # epoch 1 (5 batches), after batch 4


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def progress_of(folder: Path) -> dict:
    return json.loads((folder / "checkpoint.json").read_text())["progress"]


def folder_at_step(out: Path, step: int) -> Path:
    """The checkpoint folder of ``out`` written after M-step ``step``."""
    found = [p for p in (out / "checkpoints").glob("ckpt-*") if progress_of(p)["step"] == step]
    assert len(found) == 1, found
    return found[0]


def point_latest_at(out: Path, step: int) -> None:
    folder = folder_at_step(out, step)
    assert progress_of(folder)["batch"]
    (out / "checkpoints" / "latest").write_text(folder.name + "\n")


def checkpoint_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, str]:
    """Single-process references, then every scenario of dist_worker on two ranks under
    torchrun; returns the folder and the ranks' stdout."""
    tmp = tmp_path_factory.mktemp("dist")
    proc = launch(tmp)
    if proc.returncode != 0 and launch_failed(proc):
        # torchrun --standalone picks a free port that another process may take before it
        # binds: a launch failure, not a result; one more launch in a fresh folder decides
        tmp = tmp_path_factory.mktemp("dist-relaunch")
        proc = launch(tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp, proc.stdout


def launch(tmp: Path) -> subprocess.CompletedProcess:
    """Write the single-process references into ``tmp`` and run dist_worker there."""
    for name, hmm, cfg, out in (
            ("minibatch", w.model(), w.config(checkpoint_every=2), tmp / "single"),
            ("fullbatch", w.model(), w.config(full_batch=True), None),
            ("homogeneous", w.model(homogeneous=True), w.config(), None)):
        train(hmm, w.windows(), cfg, out=out, progress=False)
        w.save_params(hmm, tmp / f"single-{name}.safetensors")
    shutil.copytree(tmp / "single", tmp / "resume2")  # a 1-rank run, continued on 2 ranks
    point_latest_at(tmp / "resume2", MID_STEP)
    for later in (tmp / "resume2" / "checkpoints").glob("ckpt-*"):
        if progress_of(later)["step"] > MID_STEP:  # the two ranks must write these themselves
            shutil.rmtree(later)
    write_corpus(tmp / "corpus")
    return torchrun(Path(w.__file__), [str(tmp)], {"HMMLVD_DIST_TIMEOUT": "120"})


@pytest.mark.parametrize("scenario", ["minibatch", "fullbatch", "homogeneous"])
def test_two_ranks_equal_one_process(runs, scenario):
    runs, _ = runs
    close(params(w.result_path(runs, scenario, 0)),
          params(runs / f"single-{scenario}.safetensors"))


def test_only_rank_0_writes(runs):
    runs, _ = runs
    assert not (runs / "minibatch-out-rank1").exists()
    assert not (runs / "fullbatch-out-rank1").exists()
    ours, single = runs / "minibatch-out-rank0" / "checkpoints", runs / "single" / "checkpoints"
    assert checkpoint_names(ours.parent) == checkpoint_names(single.parent)
    assert (ours / "latest").read_text().strip() == folder_at_step(ours.parent, 10).name
    a = progress_of(folder_at_step(ours.parent, 10))
    b = progress_of(folder_at_step(single.parent, 10))
    assert (a["epoch"], a["batch"], a["step"]) == (b["epoch"], b["batch"], b["step"]) == (2, 0, 10)
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["train_ll_per_token"] == pytest.approx(rb["train_ll_per_token"], abs=1e-5)


def test_two_rank_checkpoint_resumes_with_one_process(runs, tmp_path):
    runs, _ = runs
    out = tmp_path / "run"
    shutil.copytree(runs / "minibatch-out-rank0", out)
    point_latest_at(out, MID_STEP)
    hmm, config, checkpoints = load_checkpoint(out)
    train(hmm, w.windows(), config, progress=False, checkpoints=checkpoints)
    close(hmm.parameters(), params(w.result_path(runs, "minibatch", 0)))


def test_one_process_checkpoint_resumes_with_two_ranks(runs):
    runs, _ = runs
    rank0 = params(w.result_path(runs, "resume_from_one_rank", 0))
    close(rank0, params(runs / "single-minibatch.safetensors"))
    # the checkpoints after MID_STEP were deleted before the ranks resumed: rank 0 wrote these
    resumed = runs / "resume2"
    assert checkpoint_names(resumed) == checkpoint_names(runs / "single")
    last = folder_at_step(resumed, 10)
    assert (resumed / "checkpoints" / "latest").read_text() == last.name + "\n"
    close(rank0, HMM.from_pretrained(last).parameters())


def test_lvd_shards_the_cache_and_shares_rank_0_labels(runs):
    """The worker checked each rank's view of the sharded cache against direct embeddings;
    here LVD and EM from those embeddings in one process (k-means seed 0) give every rank's
    labels and rank 0's model."""
    from lvd_tiny import tiny_vocab

    from hmmlvd.lvd import LVDSettings, run_lvd

    runs, _ = runs
    win = w.lvd_windows()
    one = run_lvd(win, 4, tiny_vocab(), LVDSettings(kmeans_iters=3, seed=0),
                  embeddings=np.load(runs / "lvd-embeddings.npy"), progress=False)
    # rank r clustered with seed r: rank 1 has rank 0's labels only if they were broadcast
    for r in (0, 1):
        np.testing.assert_array_equal(np.load(runs / f"lvd-labels-rank{r}.npy"), one.labels,
                                      err_msg=f"rank {r}")
    train(one.hmm, win, w.config(), progress=False)
    close(params(w.result_path(runs, "lvd", 0)), one.hmm.parameters())


def test_helpers_in_one_process():
    x = torch.arange(10).view(5, 2)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert torch.equal(distributed.shard(x), x)
    assert [distributed.shard_bounds(5, r, 2) for r in (0, 1)] == [(0, 2), (2, 5)]
    assert [distributed.shard_bounds(1, r, 2) for r in (0, 1)] == [(0, 0), (0, 1)]
    assert distributed.all_reduce_sum(1.5, 2) == [1.5, 2.0]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")  # no WORLD_SIZE: no-op


# ----- the command line under torchrun -------------------------------------------------------
WORDS = [f"w{i}" for i in range(45)]


def write_corpus(folder: Path) -> Path:
    return write_word_corpus(folder, WORDS)


def test_train_command_on_two_ranks_matches_one_process(runs, tmp_path, capsys):
    runs, stdout = runs
    assert stdout.count("on 2 ranks") == 1  # rank 0 alone prints
    assert stdout.count("this HMM") == 1  # and evaluates
    one, two = tmp_path / "one", runs / "cli-two"
    assert main(w.cli_args(runs / "corpus", one)) == 0
    capsys.readouterr()
    assert sorted(p.name for p in two.rglob("*")) == sorted(p.name for p in one.rglob("*"))
    close(HMM.from_pretrained(two).parameters(), HMM.from_pretrained(one).parameters())
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    for split in ("valid", "test"):
        assert r2["eval"][split]["sliding_ppl"] == pytest.approx(r1["eval"][split]["sliding_ppl"],
                                                                rel=1e-4)
