"""The ranks of tests/test_distributed.py: run by the test as
``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py TMP``
(gloo on CPU, joined through :func:`hmmlvd.core.distributed.init` from torchrun's environment, one
thread each). Every scenario runs in the same two processes, so they pay the torch and
transformers imports once; the command line (``hmmlvd.cli.main``) runs last, as under
``torchrun -m hmmlvd train``.

Rank 0 writes each scenario's final parameters to ``TMP/result-<scenario>-rank0.safetensors``
(outside every training output folder), which the test compares with one process trained on
the same data and schedule. (Rank 1's final parameters are not compared: every rank takes rank
0's at each epoch end, so rank 0 equal to rank 1 could not fail.) Rank r trains into
``TMP/<scenario>-out-rank<r>``, so the test can check that only rank 0 wrote anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hmmlvd import HMM
from hmmlvd.cli import main as main_cli
from hmmlvd.core import distributed
from hmmlvd.data import TokenWindows
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import (
    expected_counts,
    load_checkpoint,
    maximize,
    parallel,
    train,
)

H, V, T = 8, 50, 6
NUM_WINDOWS = 257  # 4 batches of 64 and a last batch of 1 window: rank 1's shard is empty
BATCH = 64


def windows(num: int = NUM_WINDOWS, seed: int = 0) -> TokenWindows:
    stream = np.random.default_rng(seed).integers(0, V, size=num + T - 1)
    return TokenWindows(stream, T)


def model(homogeneous: bool = False) -> HMM:
    return HMM(H, V, T, homogeneous, seed=0)


def config(full_batch: bool = False, checkpoint_every: int = 0) -> EMConfig:
    """Two epochs (step sizes 0.5 then 0.2); checkpoints kept so a test can resume from any."""
    return EMConfig(epochs=1, step_size=0.5, phase2_epochs=1, phase2_step_size=0.2,
                    final_full_batch=0, batch_size=BATCH, full_batch=full_batch, seed=3,
                    checkpoint_every=checkpoint_every, keep_checkpoints=100)


def result_path(tmp: Path, scenario: str, rank: int) -> Path:
    return tmp / f"result-{scenario}-rank{rank}.safetensors"


def save_params(hmm: HMM, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in hmm.parameters().items()}, str(path))


def main(tmp: Path) -> None:
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))  # RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun
    assert distributed.world_size() == 2 and dist.get_backend() == "gloo"
    rank = distributed.rank()
    from lvd_tiny import build_tiny_bert  # transformers: imported by both ranks at once

    if rank == 0:
        build_tiny_bert(tmp / "bert")
    distributed.barrier()
    for name, scenario in SCENARIOS.items():
        hmm = scenario(rank, tmp, str(tmp / "bert"))
        if hmm is not None and rank == 0:
            save_params(hmm, result_path(tmp, name, rank))
    # last: hmmlvd's main leaves the process group when it ends
    assert main_cli(cli_args(tmp / "corpus", tmp / "cli-two")) == 0


def cli_args(corpus: Path, out: Path) -> list[str]:
    return ["train", "--data-dir", str(corpus), "--hidden-states", "8", "--length", "6",
            "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--out", str(out),
            "--checkpoint-every", "5"]


# ----- scenarios: each returns the model whose parameters the test compares ------------------
def minibatch(rank: int, tmp: Path, _: str) -> HMM:
    hmm = model()
    train(hmm, windows(), config(checkpoint_every=2), out=tmp / f"minibatch-out-rank{rank}",
          progress=False)
    return hmm


def fullbatch(rank: int, tmp: Path, _: str) -> HMM:
    hmm = model()
    train(hmm, windows(), config(full_batch=True), out=tmp / f"fullbatch-out-rank{rank}",
          progress=False)
    return hmm


def homogeneous(rank: int, tmp: Path, _: str) -> HMM:
    hmm = model(homogeneous=True)  # 64 * 6 gathered rows > V = 50 table rows: dense path
    train(hmm, windows(), config(), progress=False)
    return hmm


def resume_from_one_rank(rank: int, tmp: Path, _: str) -> HMM:
    """Continue a single-process run (checkpoint prepared by the test) with two ranks."""
    folder = tmp / "resume2"
    hmm, saved, checkpoints = load_checkpoint(folder)  # every rank; rank 0 alone writes
    train(hmm, windows(), saved, progress=False, checkpoints=checkpoints)
    return hmm


def reduction_modes(rank: int, tmp: Path, _: str) -> None:
    """Both emission forms of all_reduce_counts give the single-process counts' M-step."""
    x = windows()[:100]
    reference = model()
    whole = expected_counts(reference, x)
    maximize(reference, whole, 0.7)
    for form in ("rows", "dense", "auto"):
        hmm = model()
        counts = parallel.all_reduce_counts(parallel.local_expected_counts(hmm, x), hmm,
                                               emission=form)
        assert counts.num_windows == 100
        assert abs(counts.log_likelihood - whole.log_likelihood) < 1e-3
        torch.testing.assert_close(counts.transition, whole.transition, rtol=1e-5, atol=1e-6)
        maximize(hmm, counts, 0.7)
        for name, p in hmm.parameters().items():
            torch.testing.assert_close(p, reference.parameters()[name], rtol=1e-5, atol=1e-7,
                                       msg=f"{form}: {name}")
    return None


def lvd_windows() -> TokenWindows:
    """LVD's 100 windows of 5 tiny-BERT words: chunks of 16 in rounds of 2, the last short."""
    from lvd_tiny import TINY_WORDS

    stream = np.random.default_rng(4).integers(0, len(TINY_WORDS), size=104)
    return TokenWindows(stream, 5)


def lvd(rank: int, tmp: Path, tiny_bert: str) -> HMM:
    """Ranks fill disjoint chunks of one embedding cache (each rank checks the whole of it);
    each rank saves the k-means labels it trained with (rank r clusters with seed r, so only
    rank 0's, broadcast, can equal one process' with seed 0) and rank 0 the embeddings, for
    the test's one-process reference."""
    from lvd_tiny import tiny_vocab

    from hmmlvd.lvd import LVDSettings, embed_windows, load_encoder, run_lvd, suffix_embeddings

    vocab = tiny_vocab()
    win = lvd_windows()
    encoder = load_encoder(tiny_bert)
    cache = tmp / "lvd-cache"
    emb = embed_windows(encoder, win, vocab, cache, batch_size=8, chunk_size=16,
                        progress=False)
    want = suffix_embeddings(encoder, win[:], vocab).numpy()
    np.testing.assert_allclose(emb.astype(np.float32), want, atol=2e-3, rtol=2e-3)
    progress = json.loads(next(cache.glob("*/progress.json")).read_text())
    assert progress == {"windows_done": len(win)}, progress
    settings = LVDSettings(encoder=encoder, cache_dir=cache, kmeans_iters=3, seed=rank)
    result = run_lvd(win, 4, vocab, settings, embeddings=emb, progress=False)
    train(result.hmm, win, config(), progress=False)  # data-parallel EM from the LVD init
    np.save(tmp / f"lvd-labels-rank{rank}.npy", result.labels)
    if rank == 0:
        np.save(tmp / "lvd-embeddings.npy", np.asarray(emb))
    return result.hmm


SCENARIOS = {"minibatch": minibatch, "fullbatch": fullbatch, "homogeneous": homogeneous,
             "resume_from_one_rank": resume_from_one_rank, "reduction_modes": reduction_modes,
             "lvd": lvd}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
