"""The patch masked autoencoder (hmmlvd.lvd.image.mae): windows layout, masking hides the
masked pixels, training lowers the loss, features, determinism, the on-disk cache, errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.lvd.image import mae as patch_mae
from hmmlvd.lvd.image.featurisers import make_featuriser
from hmmlvd.lvd.image.mae import MAEFeaturiser, PatchMAE, random_mask


def blocky_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 16, 16, 1]: random 4x4 grids of grey blocks, upsampled to 16x16."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 2, (n, 4, 4, 1)) * 255
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2).astype(np.uint8)


def tiny(**kw) -> MAEFeaturiser:
    settings = {"context": 2, "dim": 8, "epochs": 2, "batch_size": 8, "fit_images": 24,
                "progress": False} | kw
    return MAEFeaturiser(4, **settings)


def test_masked_pixels_are_hidden():
    torch.manual_seed(0)
    model = PatchMAE(16, 16, 1, 4, 3, 8)
    x = torch.rand(3, 1, 16, 16)
    masked = random_mask(3, 16, 0.5, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [8, 8, 8]
    y = x.clone()
    for b, i in masked.nonzero().tolist():  # repaint every masked patch
        r, c = divmod(i, 4)
        y[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = torch.rand(1, 4, 4)
    torch.testing.assert_close(model(x, masked), model(y, masked))
    assert not torch.allclose(model(x), model(y))


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = PatchMAE(16, 16, 1, 4, 2, 8)
    x = torch.from_numpy(blocky_images(16)).permute(0, 3, 1, 2).float() / 255
    masked = random_mask(16, 16, 0.5, torch.Generator().manual_seed(1))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.loss(x, masked)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_features_shape_and_determinism():
    images = blocky_images(30)
    a = tiny().fit(images)
    features = a.transform(images[:11])
    assert features.shape == (11, 16, 8) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert len(a.losses) == 2
    np.testing.assert_array_equal(tiny().fit(images).transform(images[:11]), features)
    assert not np.array_equal(tiny(seed=1).fit(images).transform(images[:11]), features)


def test_cache_hit_skips_training(tmp_path, monkeypatch):
    images = blocky_images(30)
    first = tiny(cache_dir=tmp_path).fit(images)
    assert [p.name.startswith("mae-") for p in tmp_path.iterdir()] == [True]

    def no_training(*args, **kwargs):
        raise AssertionError("train_mae called on a cache hit")

    monkeypatch.setattr(patch_mae, "train_mae", no_training)
    second = tiny(cache_dir=tmp_path).fit(images)
    assert len(list(tmp_path.iterdir())) == 1
    assert second.losses == first.losses
    np.testing.assert_array_equal(second.transform(images), first.transform(images))
    with pytest.raises(AssertionError, match="train_mae called"):  # other data: a miss
        tiny(cache_dir=tmp_path).fit(images[:29])


def test_corrupt_cache(tmp_path):
    images = blocky_images(30)
    tiny(cache_dir=tmp_path).fit(images)
    (folder,) = tmp_path.iterdir()
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="delete it"):
        tiny(cache_dir=tmp_path).fit(images)


def test_cache_folder_is_in_the_persist_format_under_the_old_key(tmp_path):
    images = blocky_images(30)
    tiny(cache_dir=tmp_path).fit(images)
    (folder,) = tmp_path.iterdir()
    config = persist.read_config(folder, "mae")
    inputs = {k: config[k] for k in ("settings", "images")}
    old_key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    assert folder.name == f"mae-{old_key}" == f"mae-{persist.cache_key(inputs)}"
    assert set(persist.tensor_shapes(folder)) == set(PatchMAE(16, 16, 1, 4, 2, 8).state_dict())


def test_cache_folder_of_the_old_format_is_refused_with_the_fix(tmp_path, monkeypatch):
    """A folder written before hmmlvd.core.persist (same key; no format_version or model_type in
    its config) is reported, naming the folder and the fix, without training; once deleted,
    the next fit retrains and caches again."""
    images = blocky_images(30)
    first = tiny(cache_dir=tmp_path).fit(images)
    (folder,) = tmp_path.iterdir()
    path = folder / persist.CONFIG_FILE
    config = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in config.items()
                                if k not in ("format_version", "model_type")}))
    trained = []
    monkeypatch.setattr(patch_mae, "train_mae", lambda *a, **k: trained.append(1) or [0.0])
    message = f"MAE cache {re.escape(str(folder))} .*delete it to retrain"
    with pytest.raises(CheckpointError, match=message):
        tiny(cache_dir=tmp_path).fit(images)
    assert trained == []
    shutil.rmtree(folder)
    tiny(cache_dir=tmp_path).fit(images)
    assert trained == [1] and persist.read_config(folder, "mae")["losses"] == [0.0]
    assert first.losses != [0.0]


def test_make_featuriser_mae():
    mae = make_featuriser("mae", 4, context=1, dim=8, progress=False, epochs=1, mask_ratio=0.25)
    assert isinstance(mae, MAEFeaturiser)
    assert (mae.context, mae.dim, mae.epochs, mae.mask_ratio) == (1, 8, 1, 0.25)


def test_errors():
    with pytest.raises(ParameterError, match="multiple of 4"):
        tiny(dim=6)
    for ratio in (0, 1, "half"):
        with pytest.raises(ParameterError, match="mask_ratio"):
            tiny(mask_ratio=ratio)
    with pytest.raises(ParameterError, match="lr"):
        tiny(lr=-1.0)
    with pytest.raises(DataError, match="epochs must be >= 1"):
        tiny(epochs=0)
    with pytest.raises(ParameterError, match="not fitted"):
        tiny().transform(blocky_images(2))
    with pytest.raises(DataError, match="does not divide"):
        MAEFeaturiser(5, progress=False).fit(blocky_images(2))
    with pytest.raises(DataError, match="uint8"):
        tiny().fit(blocky_images(2).astype(np.int64))
    fitted = tiny(epochs=1).fit(blocky_images(8))
    with pytest.raises(DataError, match="fitted on images of shape"):
        fitted.transform(np.zeros((2, 8, 8, 1), dtype=np.uint8))
