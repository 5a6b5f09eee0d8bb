"""Shared fixtures: tiny HMM factories and brute-force oracles that enumerate every hidden path.

The oracles read the parameter tensors directly in the documented layout (``initial`` [H],
``transition`` [P_A, H, H], ``emission`` [P_B, V, H] word-major) and compute in float64, so
they share no code with the library's forward algorithm or EM.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from hmmlvd.hmm import HMM

# The tensors in these tests are tiny: one intra-op thread is much faster than several
# threads spinning on a shared 2-core machine (about 30x for an E-step on a small batch).
torch.set_num_threads(1)

# /work/shared/data/wikitext-2 when the repository is /work/main.
SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


# ----- model factories ---------------------------------------------------------------------
def peaked_hmm(num_states: int, vocab_size: int, length: int, homogeneous: bool = False,
               seed: int = 0, sharpness: float = 2.0, vocab=None) -> HMM:
    """An HMM whose distributions are softmax(sharpness * N(0, 1)): far from uniform, so that
    a transposed matrix or a wrong position index changes every number a test looks at."""
    gen = torch.Generator().manual_seed(seed)
    pa = 1 if homogeneous else length - 1
    pb = 1 if homogeneous else length

    def draw(*shape: int) -> torch.Tensor:
        return sharpness * torch.randn(*shape, generator=gen, dtype=torch.float64)

    initial = torch.softmax(draw(num_states), 0)
    transition = torch.softmax(draw(pa, num_states, num_states), -1)
    emission = torch.softmax(draw(pb, vocab_size, num_states), -2)
    return HMM(num_states, vocab_size, length, homogeneous, initial=initial.float(),
               transition=transition.float(), emission=emission.float(), vocab=vocab)


def save_hmm_checkpoint(hmm: HMM, config, progress, out: Path, run_id: str = "") -> Path:
    """One checkpoint of ``hmm`` at ``progress`` (an hmmlvd.em.Progress) in run folder ``out``,
    written as training writes it (EMCheckpoints.save), by run ``run_id`` (new if empty);
    returns its folder."""
    from hmmlvd.em.checkpoints import EMCheckpoints

    checkpoints = EMCheckpoints(out)
    checkpoints.begin(config)
    checkpoints.watch(hmm)
    checkpoints.run_id = run_id
    return checkpoints.save(progress, None)


@pytest.fixture
def make_hmm():
    """Factory: ``make_hmm(H, V, T, homogeneous=False, seed=0, sharpness=2.0)``; pass
    ``sharpness=None`` for the library's own seeded random initialiser."""

    def factory(num_states: int, vocab_size: int, length: int, homogeneous: bool = False,
                seed: int = 0, sharpness: float | None = 2.0) -> HMM:
        if sharpness is None:
            return HMM(num_states, vocab_size, length, homogeneous, seed=seed)
        return peaked_hmm(num_states, vocab_size, length, homogeneous, seed, sharpness)

    return factory


def random_windows(batch: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Uniform random token windows [batch, length] (int64)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen)


# ----- brute-force oracles -----------------------------------------------------------------
def dense_parameters(hmm: HMM) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """float64 copies: initial [H]; per step t a [H, H] transition; per position t a [V, H]
    emission (t over the whole window T), read from the raw tensors."""
    initial = hmm.initial.detach().double().cpu().numpy()
    trans = hmm.transition.detach().double().cpu().numpy()
    emis = hmm.emission.detach().double().cpu().numpy()
    steps = [trans[0 if hmm.homogeneous else t] for t in range(hmm.length - 1)]
    positions = [emis[0 if hmm.homogeneous else t] for t in range(hmm.length)]
    return initial, steps, positions


def path_joints(hmm: HMM, x: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every hidden path z [K, L] of a token sequence x (L <= T) and p(x, z) [K]."""
    x = [int(v) for v in x]
    initial, steps, positions = dense_parameters(hmm)
    paths = np.array(list(itertools.product(range(hmm.num_states), repeat=len(x))),
                     dtype=np.int64).reshape(-1, len(x))
    joint = initial[paths[:, 0]] * positions[0][x[0], paths[:, 0]]
    for t in range(1, len(x)):
        joint = joint * steps[t - 1][paths[:, t - 1], paths[:, t]]
        joint = joint * positions[t][x[t], paths[:, t]]
    return paths, joint


def brute_log_prob_fn(hmm: HMM, x: Sequence[int]) -> float:
    """log p(x_1..x_L) by summing p(x, z) over all H^L paths (float64); -inf if impossible."""
    if len(x) == 0:
        return 0.0
    total = path_joints(hmm, x)[1].sum()
    return math.log(total) if total > 0 else -math.inf


def brute_counts_fn(hmm: HMM, windows: torch.Tensor) -> dict[str, np.ndarray | float]:
    """Expected counts of full windows [B, T] by enumerating paths and weighting each by its
    posterior: initial [H], transition [P_A, H, H], emission [P_B, V, H], log_likelihood."""
    h, v, length = hmm.num_states, hmm.vocab_size, hmm.length
    pa = 1 if hmm.homogeneous else length - 1
    pb = 1 if hmm.homogeneous else length
    initial = np.zeros(h)
    transition = np.zeros((pa, h, h))
    emission = np.zeros((pb, v, h))
    log_lik = 0.0
    for row in windows.tolist():
        paths, joint = path_joints(hmm, row)
        total = joint.sum()
        log_lik += math.log(total)
        post = joint / total
        for path, w in zip(paths, post, strict=True):
            initial[path[0]] += w
            for t in range(length - 1):
                transition[0 if hmm.homogeneous else t, path[t], path[t + 1]] += w
            for t in range(length):
                emission[0 if hmm.homogeneous else t, row[t], path[t]] += w
    return {"initial": initial, "transition": transition, "emission": emission,
            "log_likelihood": log_lik}


@pytest.fixture
def brute_log_prob():
    """``brute_log_prob(hmm, tokens)`` -> float log p(tokens) over all hidden paths."""
    return brute_log_prob_fn


@pytest.fixture
def brute_counts():
    """``brute_counts(hmm, windows [B, T])`` -> dict of float64 expected counts."""
    return brute_counts_fn


@pytest.fixture
def windows_factory():
    """``windows_factory(B, L, V, seed=0)`` -> uniform random int64 windows."""
    return random_windows


@pytest.fixture(scope="session")
def shared_wikitext() -> Path:
    """The shared WikiText-2 folder; skips the test when it is not on this machine."""
    if not all((SHARED_WIKITEXT / f"wiki.{s}.tokens").is_file()
               for s in ("train", "valid", "test")):
        pytest.skip(f"shared WikiText-2 copy not found at {SHARED_WIKITEXT}")
    return SHARED_WIKITEXT


@pytest.fixture
def single_thread(monkeypatch):
    """One thread for torch and FAISS here and in child processes (``OMP_NUM_THREADS``): with
    several, a reduction's order can depend on how threads are scheduled, so two runs of the
    same work on a loaded machine may differ in the last bits; tests that compare a run with a
    separately interrupted and resumed one need the arithmetic to be the same in both."""
    import faiss

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def assert_same_with_the_default_device_elsewhere(run: Callable[[], Sequence[torch.Tensor]]
                                                  ) -> None:
    """Call ``run`` twice, the second time with torch's default device set to "meta" (which
    holds no values), and assert equal results on the same devices: every tensor the code under
    test builds follows its model's (or the requested) device, never torch's default. On a GPU
    a stray one would be a device-mismatch error, or silent work on the CPU."""
    want = run()
    torch.set_default_device("meta")
    try:
        got = run()
    finally:
        torch.set_default_device(None)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a)  # values, dtype and device


def signal_during_call(monkeypatch, target: object, name: str, at: int,
                       signum: int = signal.SIGTERM) -> list[int]:
    """Send ``signum`` to this process during call number ``at`` (1-based) of
    ``target.<name>``, as Ctrl-C or a scheduler's SIGTERM would arrive mid-batch (the call
    itself then runs as usual). Returns the call counter, a one-element list."""
    real, calls = getattr(target, name), [0]

    def signalling(*args):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)
        return real(*args)

    monkeypatch.setattr(target, name, signalling)
    return calls


def signal_during_e_step(monkeypatch, at: int, signum: int = signal.SIGTERM) -> list[int]:
    """:func:`signal_during_call` on the E-step of :func:`hmmlvd.hmm.train.train`."""
    train_module = importlib.import_module("hmmlvd.hmm.train")  # not the re-exported function
    return signal_during_call(monkeypatch, train_module, "expected_counts", at, signum)
