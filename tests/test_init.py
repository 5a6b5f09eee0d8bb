"""Initialisers (hmmlvd.hmm.init): closed-form MLE from labelled windows against counts done
with explicit loops, and the seeded random initialiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.hmm import HMM, HMMConfig, mle_from_labels, random_parameters

H, V, T = 3, 5, 4


def labelled_set(n: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(n, T)), rng.integers(0, H, size=(n, T))


def hand_counted(tokens, labels, homogeneous: bool, c: float):
    """MLE by explicit Python loops over every window and position."""
    pa, pb = (1, 1) if homogeneous else (T - 1, T)
    init = [0.0] * H
    trans = [[[0.0] * H for _ in range(H)] for _ in range(pa)]
    emis = [[[0.0] * H for _ in range(V)] for _ in range(pb)]
    for x, z in zip(tokens.tolist(), labels.tolist(), strict=True):
        init[z[0]] += 1
        for t in range(T - 1):
            trans[0 if homogeneous else t][z[t]][z[t + 1]] += 1
        for t in range(T):
            emis[0 if homogeneous else t][x[t]][z[t]] += 1
    init = [(n + c) for n in init]
    init = [n / sum(init) for n in init]
    trans_p = []
    for p in range(pa):
        rows = []
        for i in range(H):
            row = [trans[p][i][j] + c for j in range(H)]
            rows.append([n / sum(row) for n in row])
        trans_p.append(rows)
    emis_p = [[[0.0] * H for _ in range(V)] for _ in range(pb)]
    for p in range(pb):
        for h in range(H):
            column = [emis[p][w][h] + c for w in range(V)]
            for w in range(V):
                emis_p[p][w][h] = column[w] / sum(column)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return as_t(init), as_t(trans_p), as_t(emis_p)


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("pseudocount", [0.5, 1e-3])
def test_mle_matches_hand_counts(homogeneous, pseudocount):
    tokens, labels = labelled_set(n=40, seed=1)
    hmm = mle_from_labels(tokens, labels, HMMConfig(H, V, T, homogeneous),
                          pseudocount=pseudocount)
    init, trans, emis = hand_counted(tokens, labels, homogeneous, pseudocount)
    assert isinstance(hmm, HMM) and hmm.homogeneous == homogeneous
    torch.testing.assert_close(hmm.initial.double(), init, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hmm.transition.double(), trans, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hmm.emission.double(), emis, rtol=1e-5, atol=1e-7)


def test_mle_without_pseudocount_is_plain_frequencies():
    """Every state appears at every position, so c = 0 is well defined: exact frequencies."""
    tokens = np.array([[0, 1, 2, 3], [4, 0, 1, 2], [1, 1, 1, 1], [2, 3, 4, 0]])
    labels = np.array([[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [0, 0, 1, 1]])
    hmm = mle_from_labels(tokens, labels, HMMConfig(H, V, T), pseudocount=0.0)
    init, trans, emis = hand_counted(tokens, labels, False, 0.0)
    torch.testing.assert_close(hmm.initial.double(), init, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(hmm.transition.double(), trans, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(hmm.emission.double(), emis, rtol=1e-6, atol=1e-7)
    assert hmm.initial[0].item() == pytest.approx(2 / 4)


# mle_from_labels wraps a read-only memmap chunk with torch.as_tensor, which warns.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_mle_chunking_torch_input_and_memmap_agree(tmp_path):
    tokens, labels = labelled_set(n=23, seed=2)
    config = HMMConfig(H, V, T)
    whole = mle_from_labels(tokens, labels, config)
    chunked = mle_from_labels(tokens, labels, config, chunk_size=4)
    as_torch = mle_from_labels(torch.from_numpy(tokens), torch.from_numpy(labels), config)
    tok_mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.int32,
                                       shape=tokens.shape)
    lab_mm = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.int16,
                                       shape=labels.shape)
    tok_mm[:], lab_mm[:] = tokens, labels
    memmapped = mle_from_labels(np.load(tmp_path / "x.npy", mmap_mode="r"),
                                np.load(tmp_path / "z.npy", mmap_mode="r"), config,
                                chunk_size=5)
    for other in (chunked, as_torch, memmapped):
        for name, value in whole.parameters().items():
            torch.testing.assert_close(other.parameters()[name], value)


def test_mle_maximises_labelled_likelihood():
    """Among models, the MLE has the highest complete-data likelihood; in particular the
    likelihood of the tokens under it beats random models on strongly structured data."""
    rng = np.random.default_rng(3)
    labels = np.tile(np.arange(T) % H, (50, 1))
    tokens = (labels + rng.integers(0, 2, size=labels.shape)) % V
    config = HMMConfig(H, V, T)
    fitted = mle_from_labels(tokens, labels, config)
    x = torch.from_numpy(tokens)
    fitted_ll = fitted.log_likelihood(x).sum().item()
    for seed in range(3):
        assert fitted_ll > HMM(H, V, T, seed=seed).log_likelihood(x).sum().item()


@pytest.mark.parametrize("homogeneous", [False, True])
def test_random_parameters_are_seeded(homogeneous):
    config = HMMConfig(H, V, T, homogeneous)
    a = random_parameters(config, seed=7)
    b = random_parameters(config, seed=7)
    c = random_parameters(config, seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x, y)
        assert not torch.allclose(x, z)
    shapes = config.shapes()
    assert [tuple(p.shape) for p in a] == [shapes["initial"], shapes["transition"],
                                           shapes["emission"]]
    initial, transition, emission = a
    assert (initial > 0).all() and (transition > 0).all() and (emission > 0).all()
    torch.testing.assert_close(initial.sum(), torch.tensor(1.0))
    torch.testing.assert_close(transition.sum(-1), torch.ones(shapes["transition"][:2]))
    torch.testing.assert_close(emission.sum(1), torch.ones(shapes["emission"][0], H))
    hmm = HMM(H, V, T, homogeneous, seed=7)
    assert torch.equal(hmm.initial, a[0]) and torch.equal(hmm.emission, a[2])
    assert not torch.equal(HMM(H, V, T, homogeneous, seed=8).transition, hmm.transition)


@pytest.mark.parametrize("bad", [
    "label too large", "negative label", "token too large", "negative token", "shape mismatch",
    "one-dimensional", "wrong length", "empty", "negative pseudocount",
    "bad label in a later chunk"])
def test_mle_rejects_bad_input(bad):
    tokens, labels = labelled_set(n=6, seed=4)
    config = HMMConfig(H, V, T)
    kwargs = {}
    if bad == "label too large":
        labels[2, 1] = H
    elif bad == "negative label":
        labels[0, 0] = -1
    elif bad == "token too large":
        tokens[3, 3] = V
    elif bad == "negative token":
        tokens[1, 2] = -2
    elif bad == "shape mismatch":
        labels = labels[:, :-1]
    elif bad == "one-dimensional":
        tokens, labels = tokens[0], labels[0]
    elif bad == "wrong length":
        config = HMMConfig(H, V, T + 1)
    elif bad == "empty":
        tokens, labels = tokens[:0], labels[:0]
    elif bad == "negative pseudocount":
        kwargs["pseudocount"] = -0.1
    elif bad == "bad label in a later chunk":
        labels[5, 0] = H + 3
        kwargs["chunk_size"] = 2
    with pytest.raises(DataError):
        mle_from_labels(tokens, labels, config, **kwargs)
