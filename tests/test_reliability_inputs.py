"""Reliability of inputs: a shared embedding cache (two writers, damaged chunks),
argument ranges, unreadable or mis-encoded inputs, oversized circuit configs and OS errors,
each reported as one ``hmmlvd <cmd>: error: ...`` line (or a library error) naming the file or
value. A tiny random BERT and tiny corpora; nothing downloaded, caches in tmp folders."""

from __future__ import annotations

import builtins
import errno
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from lvd_tiny import TINY_WORDS, build_tiny_bert, tiny_vocab
from word_corpus import WORDS, write_word_corpus

from hmmlvd import HMM
from hmmlvd.cli import main
from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, DataError, InsufficientMemoryError
from hmmlvd.data import TokenWindows, load_wikitext
from hmmlvd.hmm import sliding_perplexity
from hmmlvd.hmm.eval import window_perplexity
from hmmlvd.image import PatchCircuit, load_patch_circuit, save_patch_circuit
from hmmlvd.lvd import embed_windows, load_encoder
from hmmlvd.pc import Circuit, load_circuit, poon_domingos, save_circuit
from hmmlvd.pc.structures import hclt_region_graph

LENGTH = 6  # window length T of the CLI model


# ----- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Random lines over 11 words and ``<unk>`` (so a model's vocabulary has ``<unk>``)."""
    return write_word_corpus(tmp_path_factory.mktemp("corpus") / "wt", [*WORDS, "<unk>"])


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory) -> Path:
    """A small trained model (H=3, T=6) saved by ``hmmlvd train``."""
    out = tmp_path_factory.mktemp("model") / "run"
    assert main(["train", "--data-dir", str(corpus), "--hidden-states", "3", "--length",
                 str(LENGTH), "--epochs", "1", "--final-full-batch", "0",
                 "--batch-size", "32", "--device", "cpu",
                 "--no-eval", "--out", str(out)]) == 0
    return out


def one_line_error(capsys, command: str) -> str:
    """The captured stderr, checked to end with one ``hmmlvd <command>: error: ...`` line and
    to hold nothing else but progress bars (no traceback); returns that line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"hmmlvd {command}: error: "), err
    assert all(line.startswith("epoch ") for line in lines[:-1]), err  # EM's progress bar
    return lines[-1]


def train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(corpus), "--hidden-states", "3", "--length", "4",
            "--epochs", "1", "--final-full-batch", "0",
            "--batch-size", "32", "--device", "cpu", "--no-eval",
            "--out", str(out), *extra]


# ----- the embedding cache: two writers, damaged chunks -----------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def windows() -> TokenWindows:
    stream = np.random.default_rng(21).integers(0, len(TINY_WORDS), size=60).astype(np.int32)
    return TokenWindows(stream, 5)  # 56 windows: 4 chunks of 16 (the last 8), batches of 4


CACHE_OPTS = {"batch_size": 4, "chunk_size": 16, "progress": False}


@pytest.fixture(scope="module")
def reference(bert_dir, windows, tmp_path_factory) -> np.ndarray:
    encoder = load_encoder(str(bert_dir))
    cache = tmp_path_factory.mktemp("reference-cache")
    return np.array(embed_windows(encoder, windows, tiny_vocab(), cache, **CACHE_OPTS))


def counted(monkeypatch, encoder, on_call=None) -> list[int]:
    """Count the encoder's forward calls; ``on_call(n)`` runs before the n-th (1-based)."""
    calls: list[int] = []
    original = encoder.model.forward

    def forward(*args, **kwargs):
        calls.append(1)
        if on_call is not None:
            on_call(len(calls))
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", forward)
    return calls


def cache_folder(cache: Path) -> Path:
    (meta,) = cache.glob("*/meta.json")
    return meta.parent


def test_two_runs_sharing_a_cache_never_zero_each_others_windows(monkeypatch, capsys, bert_dir,
                                                                windows, reference, tmp_path):
    """Run A is inside its first chunk (one batch written) when run B starts on the same cache
    and dies at its first encoder call. Before: B reopened the file for writing, zeroing A's
    batch, and A finished "complete" with zeroed windows. Now B waits for A's lock (saying so),
    then finds every chunk finished and verified, and calls no encoder."""
    import types

    import hmmlvd.lvd.text.suffix as suffix

    vocab, cache = tiny_vocab(), tmp_path / "cache"
    enc_a, enc_b = load_encoder(str(bert_dir)), load_encoder(str(bert_dir))
    a_inside, b_blocked, release = threading.Event(), threading.Event(), threading.Event()

    def pause_a(call: int) -> None:
        if call == 2:  # batch 1 of chunk 0 is in the file
            a_inside.set()
            release.wait()

    def crash_b(call: int) -> None:
        raise RuntimeError("run B died")

    def flock(handle, operation: int) -> None:  # notes a wait for a lock another one holds
        if threading.current_thread() is b and not operation & suffix.fcntl.LOCK_NB:
            b_blocked.set()
        real_fcntl.flock(handle, operation)

    real_fcntl = suffix.fcntl
    monkeypatch.setattr(suffix, "fcntl", types.SimpleNamespace(**{**vars(real_fcntl),
                                                                 "flock": flock}))
    counted(monkeypatch, enc_a, pause_a)
    calls_b = counted(monkeypatch, enc_b, crash_b)
    results: dict[str, object] = {}

    def run(name: str, encoder) -> None:
        try:
            results[name] = np.array(embed_windows(encoder, windows, vocab, cache, **CACHE_OPTS))
        except Exception as exc:  # reported by the assertions below
            results[name] = exc

    def wait_for(event: threading.Event, thread: threading.Thread) -> None:
        """Until ``event`` is set or ``thread`` has ended (no time limit)."""
        while not event.wait(0.05) and thread.is_alive():
            pass

    a = threading.Thread(target=run, args=("a", enc_a))
    b = threading.Thread(target=run, args=("b", enc_b))
    try:
        a.start()
        wait_for(a_inside, a)
        assert a_inside.is_set(), results.get("a")
        b.start()
        wait_for(b_blocked, b)  # B waits for A's lock (or has ended: asserted below)
    finally:
        release.set()
        a.join()
        if b.ident is not None:
            b.join()
    said = capsys.readouterr().err
    assert b_blocked.is_set(), results.get("b")
    assert not isinstance(results["a"], Exception), results["a"]
    np.testing.assert_array_equal(results["a"], reference)
    assert not isinstance(results["b"], Exception), results["b"]
    np.testing.assert_array_equal(results["b"], reference)
    assert calls_b == []
    assert "waiting for another process" in said and str(cache_folder(cache)) in said


def test_flipped_byte_in_a_chunk_is_detected_and_recomputed(monkeypatch, bert_dir, windows,
                                                           reference, tmp_path):
    encoder, vocab = load_encoder(str(bert_dir)), tiny_vocab()
    embed_windows(encoder, windows, vocab, tmp_path, **CACHE_OPTS)
    data = cache_folder(tmp_path) / "embeddings.f16"
    raw = bytearray(data.read_bytes())
    raw[40 * 5 * 32 * 2 + 7] ^= 0x10  # window 40 lies in chunk 2 (windows 32..47)
    data.write_bytes(bytes(raw))
    calls = counted(monkeypatch, encoder)
    again = embed_windows(encoder, windows, vocab, tmp_path, **CACHE_OPTS)
    assert len(calls) == 4  # chunk 2 only: 16 windows in batches of 4
    np.testing.assert_array_equal(np.asarray(again), reference)


def test_unverifiable_complete_cache_with_zeroed_windows_is_recomputed(monkeypatch, bert_dir,
                                                                      windows, reference,
                                                                      tmp_path):
    """The state the race left behind: meta says complete, progress says every window, windows
    are zero, and nothing records what the chunks held. It is recomputed, never used."""
    encoder, vocab = load_encoder(str(bert_dir)), tiny_vocab()
    embed_windows(encoder, windows, vocab, tmp_path, **CACHE_OPTS)
    folder = cache_folder(tmp_path)
    store = np.memmap(folder / "embeddings.f16", dtype=np.float16, mode="r+",
                      shape=reference.shape)
    store[3:9] = 0
    store.flush()
    del store
    for name in ("chunks.json",):
        (folder / name).unlink(missing_ok=True)
    calls = counted(monkeypatch, encoder)
    again = embed_windows(encoder, windows, vocab, tmp_path, **CACHE_OPTS)
    assert len(calls) == 14  # every chunk: 56 windows in batches of 4
    np.testing.assert_array_equal(np.asarray(again), reference)


# ----- evaluation ranges ------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [-4, 0])
def test_library_perplexities_refuse_a_batch_size_below_one(make_hmm, batch_size):
    hmm = make_hmm(3, 5, 4, seed=1)
    stream = np.random.default_rng(0).integers(0, 5, size=200)
    with pytest.raises(DataError, match=f"batch_size must be >= 1, got {batch_size}"):
        sliding_perplexity(hmm, stream, batch_size=batch_size)
    with pytest.raises(DataError, match=f"batch_size must be >= 1, got {batch_size}"):
        window_perplexity(hmm, TokenWindows(stream, 4), batch_size=batch_size)


@pytest.mark.parametrize("flag, value", [("--eval-batch-size", "-4"),
                                         ("--eval-batch-size", "0"),
                                         ("--max-eval-tokens", "-3"),
                                         ("--max-eval-tokens", "0")])
def test_eval_ranges_are_one_line_errors(model, corpus, capsys, flag, value):
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data-dir", str(corpus), "--device", "cpu",
                 flag, value]) == 2
    err = one_line_error(capsys, "eval")
    assert f"{flag} must be >= 1, got {value}" in err


# ----- every integer flag -----------------------------------------------------------------
TRAIN_FLAGS = [("--epochs", "-1", 0), ("--phase2-epochs", "-2", 0),
               ("--final-full-batch", "-1", 0), ("--batch-size", "-4", 1),
               ("--batch-size", "0", 1), ("--checkpoint-every", "-5", 0),
               ("--eval-batch-size", "-1", 1), ("--max-eval-tokens", "-7", 1)]
LVD_FLAGS = [("--embed-batch-size", "0", 1), ("--embed-batch-size", "-8", 1),
             ("--kmeans-sample", "0", 1), ("--kmeans-sample", "-5", 1),
             ("--kmeans-iters", "0", 1)]


@pytest.mark.parametrize("flag, value, minimum", TRAIN_FLAGS)
def test_train_integer_flags_are_range_checked(corpus, tmp_path, capsys, flag, value,
                                               minimum):
    assert main(train_argv(corpus, tmp_path / "run", flag, value)) == 2
    err = one_line_error(capsys, "train")
    assert f"{flag} must be >= {minimum}, got {value}" in err
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("flag, value, minimum", LVD_FLAGS)
def test_lvd_integer_flags_are_range_checked(corpus, tmp_path, capsys, flag, value, minimum):
    argv = ["lvd", "--data-dir", str(corpus), "--hidden-states", "2", "--length", "4",
            "--device", "cpu", "--encoder", str(tmp_path / "no-encoder"), "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "run"), flag, value]
    assert main(argv) == 2
    err = one_line_error(capsys, "lvd")
    assert f"{flag} must be >= {minimum}, got {value}" in err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_sample_count_is_range_checked(model, capsys, value):
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--device", "cpu", "--num-samples",
                 value]) == 2
    assert f"--num-samples must be >= 1, got {value}" in one_line_error(capsys, "sample")


@pytest.mark.parametrize("value", [str(10**23), str(2**63), "-1"])
def test_seeds_are_range_checked(model, corpus, tmp_path, capsys, value):
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--device", "cpu", "--seed", value]) == 2
    assert f"--seed must lie in [0, 2**63), got {value}" in one_line_error(capsys, "sample")
    assert main(train_argv(corpus, tmp_path / "run", "--seed", value)) == 2
    assert f"--seed must lie in [0, 2**63), got {value}" in one_line_error(capsys, "train")


def test_largest_seed_is_accepted(model, capsys):
    assert main(["sample", "--model", str(model), "--device", "cpu", "--num-samples", "1",
                 "--seed", str(2**63 - 1)]) == 0


# ----- devices ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "meta", "mps", "cuda:x", "gpu:0"])
def test_unsupported_devices_are_one_line_errors(model, corpus, capsys, device):
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data-dir", str(corpus), "--device",
                 device]) == 2
    err = one_line_error(capsys, "eval")
    assert f"--device {device}" in err and "cpu, cuda, cuda:N or auto" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_index_without_a_gpu(model, capsys):
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--device", "cuda:3"]) == 2
    err = one_line_error(capsys, "sample")
    assert "--device cuda:3" in err and "no CUDA GPU" in err


# ----- sampling ---------------------------------------------------------------------------
def test_sample_refuses_an_absurd_count_before_allocating(model, capsys):
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--device", "cpu", "--num-samples",
                 str(10**13)]) == 2
    err = one_line_error(capsys, "sample")
    assert "10,000,000,000,000 samples" in err and "available" in err and "TB" in err


def test_library_sample_checks_memory_first(make_hmm, monkeypatch):
    hmm = make_hmm(3, 5, 4, seed=2)
    monkeypatch.setattr("hmmlvd.core.memory.available_bytes", lambda device: 10**6)
    with pytest.raises(InsufficientMemoryError, match="100,000 samples"):
        hmm.sample(100_000)
    assert hmm.sample(10).shape == (10, 4)


def test_sample_prefix_of_t_words_is_an_error(model, capsys):
    capsys.readouterr()
    prefix = " ".join(["the"] * LENGTH)
    assert main(["sample", "--model", str(model), "--device", "cpu", "--prefix", prefix]) == 2
    err = one_line_error(capsys, "sample")
    assert f"--prefix has {LENGTH} words" in err and f"at most {LENGTH - 1}" in err


def test_sample_prefix_word_outside_the_vocabulary_is_an_error(model, capsys):
    """The model's vocabulary has <unk>: 'zebra' silently became <unk> before."""
    assert "<unk>" in HMM.from_pretrained(model).vocab.index
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--device", "cpu", "--prefix",
                 "the zebra"]) == 2
    err = one_line_error(capsys, "sample")
    assert "--prefix" in err and "'zebra'" in err and "<unk>" in err
    assert main(["sample", "--model", str(model), "--device", "cpu", "--prefix",
                 "the <unk>", "--num-samples", "2"]) == 0  # written explicitly: fine
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[:2] == ["the", "<unk>"] for line in lines)


# ----- token files ------------------------------------------------------------------------
@pytest.mark.parametrize("encoding, text", [("latin-1", "the café sat\n"),
                                            ("utf-16", "the cat sat\n"),  # with a BOM
                                            ("utf-16-le", "the cat sat\n")])  # valid UTF-8!
def test_token_file_that_is_not_utf8_names_the_file(corpus, tmp_path, capsys, encoding, text):
    data = tmp_path / "wt"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"wiki.{split}.tokens").write_bytes((corpus / f"wiki.{split}.tokens").read_bytes())
    bad = data / "wiki.valid.tokens"
    bad.write_bytes(text.encode(encoding))
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens"):
        load_wikitext(data)
    assert main(train_argv(data, tmp_path / "run")) == 2
    err = one_line_error(capsys, "train")
    assert str(bad) in err and "UTF-8" in err


def test_unreadable_token_file_is_a_one_line_error(corpus, tmp_path, capsys, monkeypatch):
    """Permission denied (simulated: the tests may run as root, which chmod does not stop)."""
    target = corpus / "wiki.train.tokens"
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert main(train_argv(corpus, tmp_path / "run")) == 2
    err = one_line_error(capsys, "train")
    assert "Permission denied" in err and str(target) in err


# ----- OS errors and memory at the CLI boundary ------------------------------------------
@pytest.mark.parametrize("error, shown", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/model.safetensors"),
     "Is a directory: /x/model.safetensors"),
    (MemoryError(), "out of memory"),
])
def test_os_and_memory_errors_are_one_line(corpus, tmp_path, capsys, monkeypatch, error,
                                           shown):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(HMM, "save_pretrained", fail)
    out = tmp_path / "run"
    assert main(train_argv(corpus, out)) == 2
    err = one_line_error(capsys, "train")
    assert shown in err
    if getattr(error, "errno", None) == errno.ENOSPC:
        assert str(out) in err  # no file name in the error: the output folder is named


# ----- circuit configs --------------------------------------------------------------------
@pytest.fixture
def saved_circuit(tmp_path) -> Path:
    circuit = Circuit(poon_domingos(2, 3, delta=1), 2, input="categorical", num_categories=3,
                      product="einsum", seed=1)
    save_circuit(circuit, tmp_path / "c")
    return tmp_path / "c"


def edit_config(folder: Path, edit) -> None:
    path = folder / persist.CONFIG_FILE
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["settings"].update(num_units=10**7), "num_units=10000000"),
    (lambda raw: raw["settings"].update(num_categories=10**12), "GB"),
    (lambda raw: raw["graph"].update(num_variables=1e300), "num_variables"),
    (lambda raw: raw["graph"].update(num_variables=10**12), "num_variables is 1000000000000"),
    (lambda raw: raw["graph"].update(num_variables=True), "num_variables"),
])
def test_oversized_circuit_config_is_refused_before_allocating(saved_circuit, edit, message):
    edit_config(saved_circuit, edit)
    with pytest.raises(CheckpointError, match=message):
        load_circuit(saved_circuit)


def test_deeply_nested_circuit_config_is_refused(saved_circuit):
    (saved_circuit / persist.CONFIG_FILE).write_text(
        '{"format_version": 1, "model_type": "circuit", "graph": ' + "[" * 100_000
        + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested"):
        load_circuit(saved_circuit)


def test_circuit_config_larger_than_the_cap_is_not_read(saved_circuit, monkeypatch):
    monkeypatch.setattr(persist, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(CheckpointError, match="larger than"):
        load_circuit(saved_circuit)


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["settings"].update(image_shape=[10**6, 10**6, 3]), "image_shape"),
    (lambda raw: raw["settings"].update(image_shape=[2.0, 4, 1]), "image_shape"),
    (lambda raw: raw["settings"].update(sub_units=10**7), "sub_units=10000000"),
])
def test_oversized_patch_circuit_config_is_refused_before_allocating(tmp_path, edit, message):
    chain = [[j, j + 1] for j in range(3)]
    parts = [hclt_region_graph(chain, num_variables=4)] * 6  # 2 patches x 3 latent values
    model = PatchCircuit((2, 4, 1), 2, parts, hclt_region_graph([(0, 1)], num_variables=2), 3,
                         2, 2, num_categories=2, seed=1)
    save_patch_circuit(model, tmp_path / "p")
    edit_config(tmp_path / "p", edit)
    with pytest.raises(CheckpointError, match=message):
        load_patch_circuit(tmp_path / "p")


def test_cache_dir_that_is_a_file_fails_before_any_work(corpus, tmp_path, capsys, monkeypatch):
    """--cache-dir is checked before the data and the encoder are loaded."""
    import hmmlvd.pipelines.text as cli  # where the text pipeline loads its data

    loaded = []
    monkeypatch.setattr(cli, "load_wikitext", lambda *a, **k: loaded.append(1))
    cache = tmp_path / "cache"
    cache.write_text("a file")
    argv = ["lvd", "--data-dir", str(corpus), "--hidden-states", "2", "--length", "4",
            "--device", "cpu", "--cache-dir", str(cache), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = one_line_error(capsys, "lvd")
    assert "embedding cache folder" in err and "is a file" in err and str(cache) in err
    assert loaded == []
