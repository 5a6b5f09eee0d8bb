"""Pictures of image models: grids of samples and of inpaintings, saved as PNG.

Models are anything with ``sample(n, seed=...)`` and ``inpaint(x, missing, seed=...)`` over
[N, H*W*C] pixels in HWC order (a :class:`~hmmlvd.pc.circuit.Circuit` or a
:class:`~hmmlvd.image.patch_circuit.PatchCircuit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.report import save_figure
from hmmlvd.core.validate import check_int
from hmmlvd.data.images import flatten

LEVELS = 256
MASK_COLOUR = (110, 20, 20)  # how a masked image shows its missing pixels (RGB)
MASKS = ("bottom", "top", "left", "right", "centre")


def region_mask(kind: str, count: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """[count, H*W*C] bool mask (True = missing) of one region of every image: the
    ``bottom`` H - H // 2 rows, the ``top`` H // 2 rows, the ``left`` W // 2 or ``right``
    W - W // 2 columns, or the ``centre`` half-size square."""
    if kind not in MASKS:
        raise DataError(f"unknown mask {kind!r}; expected one of {MASKS}")
    height, width, channels = shape
    mask = torch.zeros(count, height, width, channels, dtype=torch.bool)
    rows, cols = slice(None), slice(None)
    if kind == "bottom":
        rows = slice(height // 2, None)
    elif kind == "top":
        rows = slice(None, height // 2)
    elif kind == "left":
        cols = slice(None, width // 2)
    elif kind == "right":
        cols = slice(width // 2, None)
    else:
        rows = slice(height // 4, height // 4 + max(1, height // 2))
        cols = slice(width // 4, width // 4 + max(1, width // 2))
    mask[:, rows, cols] = True
    return mask.flatten(1)


def as_rgb(pixels: np.ndarray | torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """[n, D] grey levels -> [n, H, W, 3] uint8."""
    pixels = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    images = np.clip(pixels, 0, LEVELS - 1).astype(np.uint8).reshape(-1, *shape)
    return np.repeat(images, 3, axis=-1) if shape[2] == 1 else images


def save_grid(rows: Sequence[np.ndarray], path: str | Path, title: str,
              labels: Sequence[str] = ()) -> Path:
    """Rows of [n, H, W, 3] uint8 images as one PNG (1-pixel white gaps), row labels on the
    left; the folder is created."""
    from matplotlib.figure import Figure  # only when drawing

    path = Path(path)
    height, width = rows[0].shape[1:3]
    gap = 1
    canvas = np.full((len(rows) * (height + gap) - gap, len(rows[0]) * (width + gap) - gap, 3),
                     255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top:top + height, left:left + width] = image
    fig = Figure(figsize=(1.0 + 0.55 * len(rows[0]), 0.4 + 0.55 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + gap) + height / 2 for r in range(len(labels))], labels,
                  fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)
    return path


def save_samples(model, shape: tuple[int, int, int], path: str | Path, title: str,
                 seed: int = 0, grid: int = 8) -> Path:
    """A ``grid`` x ``grid`` PNG of samples ``model.sample(grid**2, seed=seed)``."""
    check_int(grid, "--grid (the grid side)", 1)
    images = as_rgb(model.sample(grid * grid, seed=seed), shape)
    return save_grid(list(images.reshape(grid, grid, *images.shape[1:])), path, title)


def check_inpainting(count: int, draws: int) -> None:
    """DataError unless ``count`` images and ``draws`` draws per image are both >= 1 (what
    :func:`save_inpaintings` checks; callers check it before loading any images)."""
    check_int(count, "--num-images (count)", 1)
    check_int(draws, "--draws (draws per image)", 1)


def save_inpaintings(model, images: np.ndarray, path: str | Path, title: str, seed: int = 0,
                     mask: str = "bottom", count: int = 8, draws: int = 3) -> Path:
    """The ``mask`` region of the first ``count`` of ``images`` [N, H, W, C] inpainted, as a
    PNG: rows original, masked (missing pixels dark red), then ``draws`` draws from
    p(missing | observed) (seeds ``seed``, ``seed + 1``, ...)."""
    check_inpainting(count, draws)
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"images must be a non-empty [N, H, W, C] array, got {images.shape}")
    shape = tuple(images.shape[1:])
    x = torch.as_tensor(flatten(images[:count]))
    missing = region_mask(mask, len(x), shape)
    original = as_rgb(x, shape)
    masked = original.copy()
    masked[missing.view(len(x), *shape).any(-1).numpy()] = MASK_COLOUR
    filled = [as_rgb(model.inpaint(x, missing, seed=seed + i), shape) for i in range(draws)]
    labels = ["original", "masked", *(f"draw {i + 1}" for i in range(draws))]
    return save_grid([original, masked, *filled], path, title, labels)
