"""Cache entries are never visible as finished before their contents are complete: a writer
interrupted in the middle leaves nothing a later reader would take for a finished entry, and
that reader recomputes what is missing and gets what an uninterrupted run gets. The MAE patch
featuriser's cache (one folder per entry) and the suffix-embedding cache (chunks recorded as
they finish)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lvd_tiny import TINY_WORDS, build_tiny_bert, tiny_vocab

from hmmlvd.core import persist
from hmmlvd.data import TokenWindows
from hmmlvd.lvd import embed_windows, load_encoder
from hmmlvd.lvd.image import mae as patch_mae
from hmmlvd.lvd.image.mae import MAEFeaturiser


def blocky_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 8, 8, 1]: random 2x2 grids of black and white blocks."""
    small = np.random.default_rng(seed).integers(0, 2, (n, 2, 2, 1)) * 255
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2).astype(np.uint8)


def tiny_mae(cache_dir: Path | None) -> MAEFeaturiser:
    return MAEFeaturiser(4, context=1, dim=4, epochs=1, batch_size=8, fit_images=16,
                         progress=False, cache_dir=cache_dir)


def entries(cache: Path) -> list[str]:
    """The names of the finished MAE entries a reader would look up (``mae-<key>``)."""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("mae-"))


def test_mae_cache_entry_appears_only_complete_and_an_interrupted_one_is_retrained(
        tmp_path, monkeypatch):
    """While the trained MAE is written into the cache (its tensors, then its config), no
    entry exists under the name readers look up; a write interrupted before the config leaves
    none at all, so the next fit trains again (instead of failing on, or loading, a partial
    entry), caches the model, and gives the features of an uncached fit; the fit after that
    loads it without training. Guards against writing the entry in place, where a crash or a
    concurrent reader meets a folder with tensors but no config."""
    images, cache = blocky_images(20), tmp_path / "cache"
    cache.mkdir()
    visible: list[list[str]] = []
    real_save_file, real_write_json = persist.save_file, persist.atomic_write_json

    def save_file(tensors, path):
        visible.append(entries(cache))
        return real_save_file(tensors, path)

    def interrupted_write_json(path, obj):
        visible.append(entries(cache))
        raise KeyboardInterrupt("killed while writing the cache entry")

    monkeypatch.setattr(persist, "save_file", save_file)
    monkeypatch.setattr(persist, "atomic_write_json", interrupted_write_json)
    with pytest.raises(KeyboardInterrupt):
        tiny_mae(cache).fit(images)
    assert visible == [[], []]  # while the tensors, then the config, were written
    assert entries(cache) == []
    monkeypatch.setattr(persist, "atomic_write_json", real_write_json)
    trained = []
    real_train = patch_mae.train_mae
    monkeypatch.setattr(patch_mae, "train_mae",
                        lambda *a, **k: trained.append(1) or real_train(*a, **k))
    features = tiny_mae(cache).fit(images).transform(images)
    assert trained == [1] and len(entries(cache)) == 1
    np.testing.assert_array_equal(features, tiny_mae(None).fit(images).transform(images))
    assert trained == [1, 1]
    np.testing.assert_array_equal(tiny_mae(cache).fit(images).transform(images), features)
    assert trained == [1, 1]  # the finished entry was read


# ----- the suffix-embedding cache ------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_encoder(str(build_tiny_bert(tmp_path_factory.mktemp("bert"))))


def counted_forwards(monkeypatch, encoder, fail_on: int | None = None) -> list[int]:
    """Count the encoder's forward calls; the ``fail_on``-th one raises KeyboardInterrupt."""
    calls: list[int] = []
    original = encoder.model.forward

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_on:
            raise KeyboardInterrupt("killed while computing embeddings")
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", forward)
    return calls


def test_suffix_chunk_interrupted_before_any_of_it_is_written_is_recomputed(
        monkeypatch, tmp_path, encoder):
    """Windows in chunks of 16 computed in batches of 4; the run dies at the first batch of
    the third chunk, before any of its windows are in the store. The chunk must not count as
    finished (progress says 32 windows), and the next run computes the third and fourth
    chunks only (6 batches) and returns exactly the embeddings of an uninterrupted run. Guards
    against a chunk being recorded before its windows are written: its still-zero bytes would
    match the record, and the zeros would be served as embeddings."""
    stream = np.random.default_rng(5).integers(0, len(TINY_WORDS), size=60).astype(np.int32)
    windows, vocab = TokenWindows(stream, 5), tiny_vocab()  # 56 windows
    opts = {"batch_size": 4, "chunk_size": 16, "progress": False}
    reference = np.array(embed_windows(encoder, windows, vocab, tmp_path / "ref", **opts))
    counted_forwards(monkeypatch, encoder, fail_on=2 * 4 + 1)
    with pytest.raises(KeyboardInterrupt):
        embed_windows(encoder, windows, vocab, tmp_path / "run", **opts)
    (progress,) = (tmp_path / "run").glob("*/progress.json")
    assert json.loads(progress.read_text()) == {"windows_done": 32}
    calls = counted_forwards(monkeypatch, encoder)
    resumed = np.array(embed_windows(encoder, windows, vocab, tmp_path / "run", **opts))
    assert len(calls) == 6
    np.testing.assert_array_equal(resumed, reference)
