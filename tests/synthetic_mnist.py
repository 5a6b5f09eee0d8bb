"""A small synthetic MNIST in the original IDX format, for tests of the image commands: black
28x28 images, each with one horizontal or vertical bar of bright pixels at a random place."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """``array`` as an (uncompressed) IDX file with magic number ``magic``."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def bar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 28, 28] uint8: one bright bar per image (even rows vertical, odd horizontal)."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    at = rng.integers(4, 24, size=n)
    bright = rng.integers(200, 256, size=(n, 28))
    for i in range(n):
        if i % 2:
            images[i, at[i], 4:24] = bright[i, 4:24]
        else:
            images[i, 4:24, at[i]] = bright[i, 4:24]
    return images


def write_mnist(folder: Path, train: int = 5300, test: int = 200, seed: int = 0) -> Path:
    """``train`` (5,000 of them become the valid split) and ``test`` images with labels in
    ``folder``, as ``hmmlvd.data.images.load_mnist`` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{split}-images-idx3-ubyte", bar_images(n, rng), 2051)
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return folder
