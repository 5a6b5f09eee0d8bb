"""Image loaders (hmmlvd.data.images): IDX files written by the test, CIFAR-10 binary batches,
validation carving, and the errors for damaged files; plus the real MNIST facts where the
shared copy exists."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hmmlvd.core.errors import DataError
from hmmlvd.data.images import (
    MNIST_FILES,
    flatten,
    load_cifar10,
    load_images,
    load_mnist,
    read_idx,
)

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    magic = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    header = magic + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.with_suffix("").write_bytes(raw) if path.suffix == ".gz" else path.write_bytes(raw)


def _fake_mnist(folder: Path, n_train: int = 20, n_test: int = 6, compress: bool = True):
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (n_train, 4, 5)), rng.integers(0, 10, n_train)),
              "test": (rng.integers(0, 256, (n_test, 4, 5)), rng.integers(0, 10, n_test))}
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images_name, labels_name) in MNIST_FILES.items():
        _write_idx(folder / images_name, arrays[split][0], compress)
        _write_idx(folder / labels_name, arrays[split][1], compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_round_trip_and_valid_split(tmp_path, compress):
    arrays = _fake_mnist(tmp_path, compress=compress)
    data = load_mnist(tmp_path, num_valid=5, seed=1)
    assert data.train.shape == (15, 4, 5, 1) and data.valid.shape == (5, 4, 5, 1)
    assert np.array_equal(data.test[..., 0], arrays["test"][0])
    assert np.array_equal(data.test_labels, arrays["test"][1])
    # train + valid is a permutation of the original training set, labels kept aligned
    joined = np.concatenate([data.train, data.valid])[..., 0].reshape(20, -1)
    original = arrays["train"][0].reshape(20, -1)
    order = [int(np.flatnonzero((original == row).all(1))[0]) for row in joined]
    assert sorted(order) == list(range(20))
    labels = np.concatenate([data.train_labels, data.valid_labels])
    assert np.array_equal(labels, arrays["train"][1][order])
    assert flatten(data.test).shape == (6, 20) and flatten(data.test).dtype == np.int64


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "none")
    _fake_mnist(tmp_path)
    with pytest.raises(DataError, match="num_valid"):
        load_mnist(tmp_path, num_valid=20)
    (tmp_path / MNIST_FILES["test"][1]).unlink()
    with pytest.raises(DataError, match="missing"):
        load_mnist(tmp_path)


def test_idx_damage(tmp_path):
    path = tmp_path / "x.idx"
    _write_idx(path, np.zeros((2, 3, 3)), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x09\x99" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(path)
    gz = tmp_path / "y.gz"
    gz.write_bytes(gzip.compress(b"\x00" * 100)[:10])
    with pytest.raises(DataError, match="unreadable or truncated"):
        read_idx(gz)


def test_cifar_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 3)
        images = rng.integers(0, 256, (3, 3, 32, 32))  # CHW as in the files
        rows = np.concatenate([labels[:, None], images.reshape(3, -1)], 1).astype(np.uint8)
        rows.tofile(folder / name)
        expected[name] = (labels, images.transpose(0, 2, 3, 1))
    data = load_cifar10(tmp_path, num_valid=4)
    assert data.shape == (32, 32, 3)
    assert len(data.train) == 11 and len(data.valid) == 4
    assert np.array_equal(data.test, expected["test_batch.bin"][1])
    assert np.array_equal(data.test_labels, expected["test_batch.bin"][0])
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a CIFAR-10"):
        load_cifar10(tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown image dataset"):
        load_images("svhn", tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist_facts():
    data = load_mnist(SHARED_MNIST)
    assert data.train.shape == (55000, 28, 28, 1) and data.valid.shape == (5000, 28, 28, 1)
    assert data.test.shape == (10000, 28, 28, 1) and data.test.dtype == np.uint8
    assert data.test_labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first digits
    assert int(data.train.max()) == 255 and int(data.train.min()) == 0
