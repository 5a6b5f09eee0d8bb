"""Data: vocabularies, WikiText loading and tokenisation, and strided token windows."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.data import EOS, UNK, TokenWindows, Vocabulary, load_wikitext, tokenize_lines

# ----- Vocabulary ----------------------------------------------------------------------------


def test_vocabulary_from_corpus_uses_first_appearance_order():
    vocab = Vocabulary.from_corpus(["b", "a", "b", "c", "a"])
    assert vocab.tokens == ["b", "a", "c"]
    assert len(vocab) == 3
    assert vocab.index == {"b": 0, "a": 1, "c": 2}


def test_encode_decode_round_trip():
    vocab = Vocabulary(["the", "cat", EOS, "sat"])
    words = ["the", "cat", "sat", EOS, "the"]
    ids = vocab.encode(words)
    assert ids.dtype == np.int32
    assert ids.tolist() == [0, 1, 3, 2, 0]
    assert vocab.decode(ids) == words
    assert vocab.decode(torch.tensor([3, 0])) == ["sat", "the"]


def test_unknown_word_without_unk_is_an_error_naming_it():
    vocab = Vocabulary(["a", "b"])
    with pytest.raises(DataError, match=r"'zebra'.*position 2") as info:
        vocab.encode(["a", "b", "zebra"], source="my.txt")
    assert "my.txt" in str(info.value)


def test_unknown_word_with_unk_maps_to_unk():
    vocab = Vocabulary(["a", UNK, "b"])
    assert vocab.encode(["b", "zebra", "a", "okapi"]).tolist() == [2, 1, 0, 1]


@pytest.mark.parametrize("bad_id", [-1, 3, 100])
def test_decode_rejects_ids_outside_vocabulary(bad_id):
    with pytest.raises(DataError, match="outside the vocabulary"):
        Vocabulary(["a", "b", "c"]).decode([0, bad_id])


def test_save_and_load(tmp_path):
    vocab = Vocabulary(["the", "Ä", "@-@", EOS, UNK, "naïve", "1,000"])
    vocab.save(tmp_path / "sub" / "vocab.txt")
    loaded = Vocabulary.load(tmp_path / "sub" / "vocab.txt")
    assert loaded == vocab
    assert loaded.tokens == vocab.tokens
    assert loaded != Vocabulary(["the"])


def test_load_missing_vocabulary(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Vocabulary.load(tmp_path / "nope.txt")


@pytest.mark.parametrize("tokens", [[], ["a", "b", "a"]])
def test_invalid_vocabularies(tokens):
    with pytest.raises(DataError):
        Vocabulary(tokens)


# ----- tokenisation and local WikiText folders ---------------------------------------------


def test_tokenize_lines_closes_every_line_with_eos():
    lines = [" = Title = \n", "\n", "a  b\tc\n", "last"]
    assert tokenize_lines(lines) == ["=", "Title", "=", EOS, EOS, "a", "b", "c", EOS, "last",
                                     EOS]
    assert tokenize_lines([]) == []


def write_corpus(folder, train="a b\nc a\n", valid="b c\n", test="a\n\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"wiki.{name}.tokens").write_text(text, encoding="utf-8")
    return folder


def test_load_wikitext_from_a_folder(tmp_path):
    data = load_wikitext(write_corpus(tmp_path))
    assert data.vocab.tokens == ["a", "b", EOS, "c"]
    assert data.vocab.decode(data.train) == ["a", "b", EOS, "c", "a", EOS]
    assert data.vocab.decode(data.valid) == ["b", "c", EOS]
    assert data.vocab.decode(data.test) == ["a", EOS, EOS]
    for split in ("train", "valid", "test"):
        assert data.split(split) is getattr(data, split)
        assert data.split(split).dtype == np.int32
    with pytest.raises(DataError, match="unknown split"):
        data.split("dev")


def test_load_wikitext_with_a_given_vocabulary(tmp_path):
    vocab = Vocabulary([UNK, EOS, "a"])
    data = load_wikitext(write_corpus(tmp_path), vocab=vocab)
    assert data.vocab is vocab
    assert data.train.tolist() == [2, 0, 1, 0, 2, 1]


def test_word_outside_train_vocabulary_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens.*'zebra'"):
        load_wikitext(write_corpus(tmp_path, valid="a zebra\n"))


def test_word_outside_train_vocabulary_becomes_unk_when_train_has_it(tmp_path):
    data = load_wikitext(write_corpus(tmp_path, train="a <unk> b\n", valid="zebra a\n"))
    assert data.vocab.decode(data.valid) == [UNK, "a", EOS]


def test_missing_split_file_is_named(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "wiki.test.tokens").unlink()
    with pytest.raises(DataError, match=r"wiki\.test\.tokens") as info:
        load_wikitext(folder)
    assert "wiki.train.tokens is" not in str(info.value)


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_wikitext(tmp_path / "nowhere")


def test_split_without_words(tmp_path):
    with pytest.raises(DataError, match="valid"):
        load_wikitext(write_corpus(tmp_path, valid="\n \n"))


def test_all_unk_training_split_is_an_error(tmp_path):
    """A train split of nothing but <unk> (typed in, or every word outside a given vocabulary)
    leaves nothing to learn: a DataError, not a model of <unk> and <eos>."""
    with pytest.raises(DataError, match=r"'train' .*only <unk> words \(3\)$"):
        load_wikitext(write_corpus(tmp_path / "a", train="<unk> <unk>\n\n<unk>\n"))
    vocab = Vocabulary([UNK, EOS, "zebra"])
    with pytest.raises(DataError, match="none of its words is in the given vocabulary"):
        load_wikitext(write_corpus(tmp_path / "b"), vocab=vocab)


# ----- TokenWindows ------------------------------------------------------------------------


def test_windows_are_stream_slices():
    stream = np.random.default_rng(0).integers(0, 50, size=23)
    windows = TokenWindows(stream, 5)
    assert len(windows) == 23 - 5 + 1
    got = windows[:]
    assert got.dtype == torch.int64 and got.shape == (19, 5)
    for s in range(19):
        assert got[s].tolist() == stream[s:s + 5].tolist()
    assert windows[3:6].tolist() == [stream[s:s + 5].tolist() for s in (3, 4, 5)]
    assert windows[np.array([7, 0])].tolist() == [stream[7:12].tolist(), stream[0:5].tolist()]


def test_window_as_long_as_the_stream():
    windows = TokenWindows(np.arange(4), 4)
    assert len(windows) == 1
    assert windows[:].tolist() == [[0, 1, 2, 3]]


def _starts(batches) -> list[int]:
    """First token of each window; with stream = arange, that is the window's start."""
    return [int(s) for batch in batches for s in batch[:, 0]]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_batches_cover_every_window_once(shuffle, batch_size):
    windows = TokenWindows(np.arange(30), 3)
    batches = list(windows.batches(batch_size, shuffle=shuffle, seed=3))
    assert len(batches) == windows.num_batches(batch_size) == -(-28 // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])
    starts = _starts(batches)
    assert sorted(starts) == list(range(28))
    for batch in batches:
        assert (batch[:, 1:] - batch[:, :-1] == 1).all()
    if not shuffle:
        assert starts == list(range(28))


def test_shuffle_is_fixed_by_seed():
    windows = TokenWindows(np.arange(40), 2)
    a = _starts(windows.batches(8, shuffle=True, seed=1))
    assert a == _starts(windows.batches(8, shuffle=True, seed=1))
    assert a != _starts(windows.batches(8, shuffle=True, seed=2))
    assert a != list(range(39))


@pytest.mark.parametrize("start_batch", [0, 1, 3, 5, 6])
def test_start_batch_skips_exactly(start_batch):
    windows = TokenWindows(np.arange(40), 4)  # 37 windows: batches of 7 -> 6 batches
    full = list(windows.batches(7, shuffle=True, seed=9))
    resumed = list(windows.batches(7, shuffle=True, seed=9, start_batch=start_batch))
    assert len(resumed) == len(full) - start_batch
    for a, b in zip(full[start_batch:], resumed, strict=True):
        assert torch.equal(a, b)


def test_negative_start_batch_is_rejected():
    """A negative start_batch has no meaning; it must not yield empty or repeated batches."""
    windows = TokenWindows(np.arange(40), 4)
    with pytest.raises(DataError):
        list(windows.batches(7, shuffle=True, seed=9, start_batch=-1))


def test_max_windows_subset_is_sorted_seeded_and_correct():
    stream = np.arange(100) * 3
    a = TokenWindows(stream, 5, max_windows=10, seed=4)
    assert len(a) == 10
    starts = a.starts
    assert list(starts) == sorted(set(starts.tolist())) and len(set(starts.tolist())) == 10
    assert starts.min() >= 0 and starts.max() <= 95
    got = a[:]
    for row, s in zip(got, starts, strict=True):
        assert row.tolist() == stream[s:s + 5].tolist()
    assert np.array_equal(TokenWindows(stream, 5, max_windows=10, seed=4).starts, starts)
    assert not np.array_equal(TokenWindows(stream, 5, max_windows=10, seed=5).starts, starts)
    batched = sorted(_starts(a.batches(3, shuffle=True)))
    assert batched == sorted((stream[starts]).tolist())


def test_max_windows_zero_says_how_to_use_every_window():
    with pytest.raises(DataError, match=r"max_windows is 0.*leave it out \(None\) to use every"):
        TokenWindows(np.arange(10), 3, max_windows=0)


def test_max_windows_larger_than_available_keeps_all():
    windows = TokenWindows(np.arange(10), 3, max_windows=50)
    assert len(windows) == 8
    assert windows[:].tolist() == TokenWindows(np.arange(10), 3)[:].tolist()


@pytest.mark.parametrize("case", ["2-D stream", "float stream", "zero length", "too short",
                                  "max_windows 0", "batch size 0"])
def test_bad_window_inputs(case):
    stream = np.arange(10)
    with pytest.raises(DataError):
        if case == "2-D stream":
            TokenWindows(stream.reshape(2, 5), 2)
        elif case == "float stream":
            TokenWindows(stream.astype(np.float32), 2)
        elif case == "zero length":
            TokenWindows(stream, 0)
        elif case == "too short":
            TokenWindows(stream, 11)
        elif case == "max_windows 0":
            TokenWindows(stream, 3, max_windows=0)
        else:
            list(TokenWindows(stream, 3).batches(0))


# ----- the real WikiText-2 copy ------------------------------------------------------------


@pytest.fixture(scope="module")
def real_wikitext(shared_wikitext):
    """(load_wikitext of the shared copy, the lines of each file read independently)."""
    lines = {}
    for split in ("train", "valid", "test"):
        raw = (shared_wikitext / f"wiki.{split}.tokens").read_bytes().decode("utf-8")
        assert raw.endswith("\n")
        lines[split] = raw.split("\n")[:-1]  # the text after the final newline is empty
    return load_wikitext(shared_wikitext), lines


def test_real_vocabulary_has_33278_types(real_wikitext):
    data, lines = real_wikitext
    assert len(data.vocab) == 33278  # the published WikiText-2 figure, <eos> included
    independent = {w for line in lines["train"] for w in line.split()} | {EOS}
    assert set(data.vocab.tokens) == independent


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_real_token_counts_and_contents(real_wikitext, split):
    data, lines = real_wikitext
    stream = data.split(split)
    assert len(stream) == sum(len(line.split()) + 1 for line in lines[split])
    if split != "train":
        # no word outside the train vocabulary: decoding gives back the text exactly, so no
        # word was silently mapped to <unk>
        words = [w for line in lines[split] for w in [*line.split(), EOS]]
        assert set(words) <= set(data.vocab.tokens)
        assert data.vocab.decode(stream) == words


def test_load_wikitext_from_the_hub_copy(monkeypatch):
    """Without a folder the loader reads the `datasets` hub copy: rows are lines."""
    rows = {"train": ["a b", "", "c a"], "validation": ["b c"], "test": ["a"]}
    asked = []

    def load_dataset(name, config):
        asked.append((name, config))
        return {split: {"text": lines} for split, lines in rows.items()}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_wikitext()
    assert asked == [("Salesforce/wikitext", "wikitext-2-v1")]
    assert data.vocab.decode(data.train) == ["a", "b", "<eos>", "<eos>", "c", "a", "<eos>"]
    assert data.vocab.decode(data.valid) == ["b", "c", "<eos>"]


def test_hub_unreachable_says_to_pass_a_folder(monkeypatch):
    def load_dataset(name, config):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match="--data-dir"):
        load_wikitext()


def test_stride_keeps_every_stride_th_window():
    stream = np.arange(20)
    windows = TokenWindows(stream, 4, stride=3)
    assert len(windows) == len(range(0, 20 - 4 + 1, 3))
    for i in range(len(windows)):
        assert windows[np.array([i])][0].tolist() == stream[3 * i:3 * i + 4].tolist()
    with pytest.raises(DataError, match="stride"):
        TokenWindows(stream, 4, stride=0)
