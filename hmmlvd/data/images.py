"""Image datasets as arrays of pixel categories: MNIST from its original IDX files (and
CIFAR-10 from its binary batches where present), read with gzip + numpy, never pickle.

Images come as uint8 arrays [N, H, W, C] (grey levels 0..255 are categorical values);
``flatten`` gives the [N, H*W*C] variables of a circuit (HWC order, as ``poon_domingos``
numbers them). A validation split is carved from train with a fixed seed.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmmlvd.core.errors import DataError

IDX_IMAGES, IDX_LABELS = 2051, 2049
MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]


@dataclass
class ImageData:
    """Train / valid / test images [N, H, W, C] uint8 and labels [N] int64."""

    train: np.ndarray
    train_labels: np.ndarray
    valid: np.ndarray
    valid_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels)."""
        return tuple(self.train.shape[1:])

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise DataError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)


def flatten(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> [N, H*W*C] int64 variables (row-major pixels, channels innermost)."""
    return images.reshape(len(images), -1).astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """One (optionally gzipped) IDX file as a uint8 array of its declared shape."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is unreadable or truncated: {exc}") from exc
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IDX_IMAGES, IDX_LABELS):
        raise DataError(f"{path} has IDX magic {magic}, expected {IDX_IMAGES} or {IDX_LABELS}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path} holds {len(raw) - start} values but its header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _carve_valid(images: np.ndarray, labels: np.ndarray, num_valid: int, seed: int
                 ) -> tuple[np.ndarray, ...]:
    if not 0 <= num_valid < len(images):
        raise DataError(f"num_valid must be in 0..{len(images) - 1}, got {num_valid}")
    order = np.random.default_rng(seed).permutation(len(images))
    valid, train = order[:num_valid], order[num_valid:]
    return images[train], labels[train], images[valid], labels[valid]


def load_mnist(data_dir: str | os.PathLike, num_valid: int = 5000, seed: int = 0) -> ImageData:
    """MNIST from a folder with the four original IDX files (.gz or not): 28x28x1 images;
    ``num_valid`` training images (seeded choice) become the validation split."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} does not exist")
    arrays = {}
    for split, names in MNIST_FILES.items():
        pair = []
        for name in names:
            path = folder / name
            if not path.is_file() and (folder / name.removesuffix(".gz")).is_file():
                path = folder / name.removesuffix(".gz")
            pair.append(read_idx(path))
        images, labels = pair
        if len(images) != len(labels):
            raise DataError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
        arrays[split] = (images[..., None], labels.astype(np.int64))
    train, train_labels, valid, valid_labels = _carve_valid(*arrays["train"], num_valid, seed)
    return ImageData(train, train_labels, valid, valid_labels, *arrays["test"])


def _read_cifar_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing (CIFAR-10 binary version expected)")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"{path} is not a CIFAR-10 binary batch (size {raw.size})")
        rows = raw.reshape(-1, 3073)
        labels.append(rows[:, 0].astype(np.int64))
        images.append(rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(data_dir: str | os.PathLike, num_valid: int = 5000, seed: int = 0
                 ) -> ImageData:
    """CIFAR-10 from the binary batches (``data_batch_1.bin``.. ``test_batch.bin``, possibly in
    a ``cifar-10-batches-bin`` subfolder): 32x32x3 images."""
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist")
    train = _read_cifar_batches(folder, CIFAR_TRAIN)
    test = _read_cifar_batches(folder, CIFAR_TEST)
    return ImageData(*_carve_valid(*train, num_valid, seed), *test)


def load_images(name: str, data_dir: str | os.PathLike, num_valid: int = 5000,
                seed: int = 0) -> ImageData:
    """``name``: "mnist" or "cifar10"."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise DataError(f"unknown image dataset {name!r}; expected one of {sorted(loaders)}")
    return loaders[name](data_dir, num_valid, seed)
