"""Square patches of images: split, merge, and the circuit variables each patch holds.

Images are [N, H, W, C]; a patch size p must divide H and W. Patches are numbered row-major
over the (H/p) x (W/p) grid, and a patch's values are its pixels row-major with channels
innermost, [p * p * C] — the same order as the image's variables (pixel (r, c), channel ch is
variable (r * W + c) * C + ch, as ``poon_domingos`` numbers them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hmmlvd.core.errors import DataError


def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """(rows, cols) of the patch grid; DataError unless ``patch`` divides both sides."""
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise DataError(f"patch size must be a positive integer, got {patch!r}")
    if height % patch or width % patch:
        raise DataError(f"patch size {patch} does not divide the {height}x{width} image")
    return height // patch, width // patch


def split_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """[N, H, W, C] -> [N, num_patches, patch * patch * C]."""
    if images.ndim != 4:
        raise DataError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    rows, cols = patch_grid(h, w, patch)
    grid = images.reshape(n, rows, patch, cols, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(n, rows * cols, patch * patch * c)


def merge_patches(patches: np.ndarray, height: int, width: int, patch: int) -> np.ndarray:
    """Inverse of ``split_patches``: [N, num_patches, patch * patch * C] -> [N, H, W, C]."""
    rows, cols = patch_grid(height, width, patch)
    n, num, size = patches.shape
    if num != rows * cols or size % (patch * patch):
        raise DataError(f"patches of shape {patches.shape} do not tile a {height}x{width} image "
                        f"with patch size {patch}")
    c = size // (patch * patch)
    grid = patches.reshape(n, rows, cols, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(n, height, width, c)


def patch_variables(height: int, width: int, patch: int, channels: int = 1) -> np.ndarray:
    """[num_patches, patch * patch * C]: the flattened-image variable index of every value of
    every patch (so ``flat_images[:, patch_variables(...)[i]]`` is patch i)."""
    index = np.arange(height * width * channels).reshape(1, height, width, channels)
    return split_patches(index, patch)[0]


def check_context(context: int, image_shape: Sequence[int], images: str = "the") -> None:
    """DataError unless ``context`` pixels around a patch fit images of ``image_shape``
    (height, width, ...): wider windows hold only padding, and their size grows as the square
    of the context. ``images`` names them in the message (e.g. the dataset)."""
    side = min(image_shape[:2])
    if not 0 <= context <= side:
        raise DataError(f"--context must be in [0, {side}] (context: pixels around a patch; "
                        f"{images} images are {'x'.join(map(str, image_shape[:2]))}), got "
                        f"{context}")


def windows_with_context(x: torch.Tensor, patch: int, context: int) -> torch.Tensor:
    """Float images [B, C, H, W] -> every patch with ``context`` pixels around it (zeros beyond
    the border): [B, num_patches, (patch + 2 * context)^2 * C], patches row-major over the
    grid, each window's pixels row-major with channels innermost (``split_patches``'s layout
    when ``context`` is 0). One ``unfold``; the PCA and MAE patch featurisers both use it."""
    b, c, h, w = x.shape
    patch_grid(h, w, patch)
    side = patch + 2 * context
    cols = F.unfold(x, side, padding=context, stride=patch)  # [B, C * side^2, n]
    return cols.reshape(b, c, side * side, -1).permute(0, 3, 2, 1).reshape(b, -1, side * side * c)
