"""Patch split/merge (hmmlvd.data.patches): round trips, agreement with a per-pixel loop, and
the variable indices of each patch."""

from __future__ import annotations

import numpy as np
import pytest

from hmmlvd.core.errors import DataError
from hmmlvd.data.patches import merge_patches, patch_grid, patch_variables, split_patches


@pytest.mark.parametrize(("h", "w", "c", "p"), [(4, 6, 1, 2), (28, 28, 1, 7), (8, 8, 3, 4),
                                                (3, 3, 2, 1), (5, 5, 1, 5)])
def test_round_trip_and_loop_reference(h, w, c, p):
    images = np.random.default_rng(0).integers(0, 256, (3, h, w, c))
    patches = split_patches(images, p)
    assert patches.shape == (3, (h // p) * (w // p), p * p * c)
    assert np.array_equal(merge_patches(patches, h, w, p), images)
    for i in range(h // p):
        for j in range(w // p):
            block = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(3, -1)
            assert np.array_equal(patches[:, i * (w // p) + j], block)


def test_patch_variables_index_the_flat_image():
    images = np.random.default_rng(1).integers(0, 9, (2, 6, 4, 2))
    flat = images.reshape(2, -1)
    variables = patch_variables(6, 4, 2, channels=2)
    assert np.array_equal(flat[:, variables], split_patches(images, 2))
    assert sorted(variables.ravel().tolist()) == list(range(6 * 4 * 2))


def test_errors():
    with pytest.raises(DataError, match="does not divide"):
        patch_grid(28, 28, 5)
    with pytest.raises(DataError, match="positive integer"):
        patch_grid(4, 4, 0)
    with pytest.raises(DataError, match=r"\[N, H, W, C\]"):
        split_patches(np.zeros((4, 4)), 2)
    with pytest.raises(DataError, match="do not tile"):
        merge_patches(np.zeros((1, 3, 4)), 4, 4, 2)
