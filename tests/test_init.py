"""Initialisers (hmmlvd.hmm.init): closed-form MLE from labelled windows against counts done
with explicit loops, and the seeded random initialiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_with_the_default_device_elsewhere

from hmmlvd.core.errors import DataError
from hmmlvd.hmm import HMM, HMMConfig, mle_from_labels, mle_parameters, random_parameters

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


@pytest.mark.parametrize("bad, message", [
    ("label too large", r"^labels must lie in \[0, 3\)$"),
    ("negative label", r"^labels must lie in \[0, 3\)$"),
    ("token too large", r"^token ids must lie in \[0, 5\)$"),
    ("negative token", r"^token ids must lie in \[0, 5\)$"),
    ("shape mismatch", r"^tokens \(6, 4\) and labels \(6, 3\) must both have shape \[N, T\]$"),
    ("one-dimensional", r"^tokens \(4,\) and labels \(4,\) must both have shape \[N, T\]$"),
    ("wrong length", r"^windows have length 4, the model needs T=5$"),
    ("empty", r"^no labelled windows to count$"),
    ("negative pseudocount", r"^pseudocount must be a finite number >= 0"),
    ("pseudocount overflows", r"^pseudocount 5e\+29 is too large: 5 of them overflow"),
    ("bad label in a later chunk", r"^labels must lie in \[0, 3\)$"),
    ("float tokens", r"^tokens must be integer ids, got dtype float64$"),
    ("float labels", r"^labels must be integer ids, got dtype torch.float32$"),
    ("float token lists", r"^tokens must be integer ids"),
    ("float label lists", r"^labels must be integer ids"),
    ("chunk size 0", r"^chunk_size must be >= 1, got 0$")])
def test_mle_rejects_bad_input(bad, message):
    """Each refusal is a DataError whose message names the argument and the rule."""
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
    elif bad == "pseudocount overflows":  # V = 5 of them exceed 1e30, one alone does not
        kwargs["pseudocount"] = 5e29
    elif bad == "bad label in a later chunk":
        labels[5, 0] = H + 3
        kwargs["chunk_size"] = 2
    elif bad == "float tokens":
        tokens = tokens.astype(np.float64)
    elif bad == "float labels":
        labels = torch.from_numpy(labels).float()
    elif bad == "float token lists":
        tokens = (tokens + 0.5).tolist()
    elif bad == "float label lists":
        tokens, labels = tokens.tolist(), (labels + 0.5).tolist()
    elif bad == "chunk size 0":
        kwargs["chunk_size"] = 0
    with pytest.raises(DataError, match=message):
        mle_from_labels(tokens, labels, config, **kwargs)


def test_mle_parameters_defaults_match_hand_counts_with_pseudocount_1e3():
    """Called with only the data and the config, mle_parameters counts on the CPU with the
    documented pseudocount c = 1e-3 (the default of mle_from_labels too)."""
    tokens, labels = labelled_set(n=12, seed=5)
    got = mle_parameters(tokens, labels, HMMConfig(H, V, T))
    for value, want in zip(got, hand_counted(tokens, labels, False, 1e-3), strict=True):
        assert value.device.type == "cpu"
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["numpy uint16", "torch uint16", "nested lists"])
def test_mle_accepts_small_unsigned_ids_and_lists(kind):
    """Token ids stored as uint16 (any vocabulary below 65536) and labels as uint8, as numpy
    arrays or torch tensors, or plain nested lists, give the hand-counted MLE, also when
    every window is its own chunk (chunk_size=1)."""
    tokens, labels = labelled_set(n=10, seed=6)
    if kind == "numpy uint16":
        x, z = tokens.astype(np.uint16), labels.astype(np.uint8)
    elif kind == "torch uint16":
        x = torch.from_numpy(tokens.astype(np.int32)).to(torch.uint16)
        z = torch.from_numpy(labels.astype(np.uint8))
    else:
        x, z = tokens.tolist(), labels.tolist()
    want = hand_counted(tokens, labels, True, 0.25)
    for chunk_size in (1, 3, 65536):
        got = mle_parameters(x, z, HMMConfig(H, V, T, True), 0.25, chunk_size)
        for value, reference in zip(got, want, strict=True):
            torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-7)


def state_two_labels(case: str, n: int = 6) -> np.ndarray:
    """Labels [n, T] where states 0 and 1 occur at every position and state 2 occurs as
    ``case`` says: the counts that make some distribution undefined at pseudocount 0 or not."""
    labels = (np.arange(n)[:, None] + np.arange(T)[None, :]) % 2
    if case == "everywhere but the last position":
        labels[:, :-1] = (np.arange(n)[:, None] + np.arange(T - 1)[None, :]) % 3
    elif case == "only at the last position":
        labels[0, -1] = 2
    elif case == "only at the first position":
        labels[0, 0] = 2
    return labels


@pytest.mark.parametrize("case, homogeneous, defined", [
    # no emission counts for state 2 at the last position; every transition row has counts
    ("everywhere but the last position", False, False),
    # state 2 is never left: its transition row has no counts, its emission has
    ("only at the last position", True, False),
    # state 2 is never entered, but all its rows (and every column of emission) have counts
    ("only at the first position", True, True),
    ("nowhere", True, False)])
def test_mle_without_pseudocount_needs_every_distribution_counted(case, homogeneous, defined):
    """With pseudocount 0 a distribution with no counts is 0/0: refused with the fix; one
    whose counts exist (even if a state is never entered) is the plain frequency."""
    labels = state_two_labels(case)
    tokens = np.random.default_rng(7).integers(0, V, size=labels.shape)
    config = HMMConfig(H, V, T, homogeneous)
    if not defined:
        with pytest.raises(DataError, match=r"^some hidden state never occurs in the labels "
                           r"\(at some position\); with pseudocount 0 its distributions are "
                           r"undefined: use pseudocount > 0$"):
            mle_parameters(tokens, labels, config, pseudocount=0.0)
        return
    got = mle_parameters(tokens, labels, config, pseudocount=0.0)
    for value, want in zip(got, hand_counted(tokens, labels, homogeneous, 0.0), strict=True):
        torch.testing.assert_close(value.double(), want, rtol=1e-6, atol=1e-7)


def test_mle_of_one_window_of_one_state_without_pseudocount():
    """H = 1 and a single window: every distribution has counts, so c = 0 is well defined
    (all ones), not refused."""
    initial, transition, emission = mle_parameters(np.array([[0, 1, 1, 4]]), np.zeros((1, T),
                                                   np.int64), HMMConfig(1, V, T), 0.0)
    assert initial.tolist() == [1.0] and transition.flatten().tolist() == [1.0] * (T - 1)
    want = torch.zeros(T, V, 1)
    want[[0, 1, 2, 3], [0, 1, 1, 4]] = 1.0
    assert torch.equal(emission, want)


def test_random_parameters_land_on_the_requested_device():
    """All three tensors on ``device`` (the meta device stands in for a GPU here)."""
    for tensor in random_parameters(HMMConfig(H, V, T), seed=1, device="meta"):
        assert tensor.device.type == "meta"


@pytest.mark.parametrize("homogeneous", [True, False])
def test_mle_counts_a_word_seen_more_than_2_24_times_exactly(homogeneous):
    """One cell [position, word, state] counted about 2**24 + 2**22 times: float32 stops
    counting at 2**24 (2**24 + 1 rounds back to 2**24), which would give the rare word a
    quarter more mass than its count. Homogeneous: 655,360 windows of 32 tokens pool 20,971,520
    tokens in its one position; inhomogeneous: 2**24 + 2**22 windows of T = 2 (one byte per
    token), each position counting every window."""
    length = 32 if homogeneous else 2
    n = (2 ** 24 + 2 ** 22) // length if homogeneous else 2 ** 24 + 2 ** 22
    rare = 1000  # windows whose last token is word 1
    tokens = np.zeros((n, length), dtype=np.uint8)
    tokens[:rare, -1] = 1
    labels = np.zeros((n, length), dtype=np.uint8)
    config = HMMConfig(num_states=1, vocab_size=2, length=length, homogeneous=homogeneous)
    c = 1e-3
    _, _, emission = mle_parameters(tokens, labels, config, pseudocount=c, chunk_size=1 << 20)
    at_last = n * length if homogeneous else n  # tokens counted in the last position's cell
    want = (rare + c) / (at_last + 2 * c)
    assert emission[-1, 1, 0].item() == pytest.approx(want, rel=1e-5)
    assert emission[-1, 0, 0].item() == pytest.approx(1 - want, rel=1e-6)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_mle_builds_its_tensors_on_the_requested_device(homogeneous):
    """With torch's default device elsewhere (here "meta", which holds no values), MLE on the
    CPU from numpy arrays (read in chunks) gives the CPU numbers."""
    rng = np.random.default_rng(3)
    tokens, labels = rng.integers(0, 6, size=(40, 5)), rng.integers(0, 3, size=(40, 5))
    config = HMMConfig(3, 6, 5, homogeneous)
    assert_same_with_the_default_device_elsewhere(
        lambda: mle_parameters(tokens, labels, config, chunk_size=7, device="cpu"))


@pytest.mark.parametrize("homogeneous", [False, True])
def test_random_parameters_ignore_torchs_default_device(homogeneous):
    """The seeded draws come from a CPU generator onto the CPU whatever torch's default device
    (here "meta"): the same seed gives the same model everywhere."""
    config = HMMConfig(3, 6, 5, homogeneous)
    assert_same_with_the_default_device_elsewhere(
        lambda: random_parameters(config, seed=4, device="cpu"))
