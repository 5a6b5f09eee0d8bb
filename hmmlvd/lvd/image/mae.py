"""A tiny masked autoencoder over image patches, used as a patch featuriser for image LVD.

Each token is one patch of the grid: a linear embedding of the patch's window with ``context``
pixels around it (as ``patch_with_context``) plus a learned position embedding. Training hides
a random ``mask_ratio`` of the patches: their pixels are zeroed in the image before the windows
are cut (so no neighbour's context shows them) and their tokens are replaced by a learned mask
token; a pre-norm transformer encoder (``LAYERS`` layers, ``HEADS`` heads, width ``dim``) reads
all tokens, and a linear decoder predicts the pixels of each masked patch (MSE on those only).
Features are the encoder's output tokens without masking, [N, num_patches, dim]: every token
attends to the whole image.

A trained model is cached as ``cache_dir/mae-<key>/`` in the format of
:mod:`hmmlvd.core.persist` (``model.safetensors`` + ``config.json`` of ``model_type`` "mae")
where the key (:func:`hmmlvd.core.persist.cache_key`) hashes the settings and the training
images, so fitting again on the same data with the same settings loads it instead of training.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, ParameterError
from hmmlvd.core.validate import check_int
from hmmlvd.data.patches import patch_grid, windows_with_context
from hmmlvd.em.stop import check_stop
from hmmlvd.lvd.image.features import check_fitted_images, check_images

__all__ = ["HEADS", "LAYERS", "MAEFeaturiser", "PatchMAE", "random_mask", "train_mae"]

HEADS = 4
LAYERS = 2
MODEL_TYPE = "mae"  # the model_type of a cache entry's config.json
#: Part of the cache key (as ``settings["format_version"]``, its name in caches written before
#: :mod:`hmmlvd.core.persist`, so their keys are unchanged): bump when a cached model means
#: something else.
CACHE_VERSION = 1


class PatchMAE(nn.Module):
    """The masked autoencoder for images [B, C, H, W] with values in [0, 1]."""

    def __init__(self, height: int, width: int, channels: int, patch: int, context: int,
                 dim: int) -> None:
        super().__init__()
        self.patch, self.context = patch, context
        rows, cols = patch_grid(height, width, patch)
        self.grid = (rows, cols)
        self.embed = nn.Linear((patch + 2 * context) ** 2 * channels, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, rows * cols, dim))
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, HEADS, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(dim),
                                             enable_nested_tensor=False)
        self.decoder = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens [B, num_patches, dim] of images x [B, C, H, W]; ``masked`` (bool [B,
        num_patches]) hides those patches (pixels zeroed, tokens set to the mask token)."""
        if masked is not None:
            rows, cols = self.grid
            hidden = masked.reshape(-1, 1, rows, 1, cols, 1)
            shape = (x.shape[0], 1, rows, self.patch, cols, self.patch)
            x = x * ~hidden.expand(shape).reshape(x.shape[0], 1, *x.shape[2:])
        tokens = self.embed(windows_with_context(x, self.patch, self.context))
        if masked is not None:
            tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype), tokens)
        return self.encoder(tokens + self.position)

    def loss(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the predicted pixels of the masked patches of x [B, C, H, W]
        (``masked`` bool [B, num_patches], at least one True)."""
        predicted = self.decoder(self(x, masked))
        return F.mse_loss(predicted[masked], windows_with_context(x, self.patch, 0)[masked])


def random_mask(batch: int, num_patches: int, ratio: float,
                generator: torch.Generator) -> torch.Tensor:
    """bool [batch, num_patches]: round(ratio * num_patches) random patches per image (at
    least 1) are True."""
    count = min(num_patches, max(1, round(ratio * num_patches)))
    order = torch.rand(batch, num_patches, generator=generator).argsort(1)
    return order < count


def train_mae(model: PatchMAE, images: torch.Tensor, *, epochs: int, mask_ratio: float,
              batch_size: int, lr: float, seed: int, progress: bool = True) -> list[float]:
    """Adam on the masked-patch MSE over shuffled mini-batches of images [M, C, H, W] in [0, 1]
    (on the model's device); returns the mean loss of each epoch. A stop request ends it
    after the current batch (:func:`~hmmlvd.em.stop.check_stop`)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    num_patches = model.grid[0] * model.grid[1]
    steps = math.ceil(len(images) / batch_size)
    losses = []
    model.train()
    bar = tqdm(total=epochs * steps, desc="MAE training", unit="batch", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for lo in range(0, len(images), batch_size):
            check_stop("training the MAE featuriser")
            batch = images[order[lo:lo + batch_size]].to(device)
            masked = random_mask(len(batch), num_patches, mask_ratio, generator).to(device)
            loss = model.loss(batch, masked)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            value = loss.detach().item()
            total += value * len(batch)
            bar.update()
            bar.set_postfix(loss=f"{value:.4f}")
        losses.append(total / len(images))
    bar.close()
    model.eval()
    return losses


def _fingerprint(images: np.ndarray) -> dict:
    """Shape and SHA-1 of the training images (all bytes: about 0.1 s for MNIST train)."""
    return {"shape": list(images.shape),
            "sha1": hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()}


class MAEFeaturiser:
    """Patch features from a :class:`PatchMAE` trained on (a sample of) the training images.

    Args:
        patch: patch side (must divide the image sides).
        context: pixels around each patch that its token embedding sees.
        dim: feature size = transformer width (a multiple of ``HEADS``).
        seed: seeds the weights, the training sample, the shuffling and the masks; on CPU the
            same seed and data give the same features.
        epochs: passes over the training sample.
        mask_ratio: fraction of patches hidden per image while training, in (0, 1).
        batch_size: images per training step (and per step of ``transform``).
        fit_images: train on a seeded random sample of at most this many images.
        lr: Adam learning rate.
        cache_dir: cache the trained model under ``cache_dir/mae-<key>/``; None: no cache.
        progress: tqdm bars over batches.
        device: where to train and compute features.

    ``losses`` (after ``fit``): mean masked-patch MSE of each training epoch.
    """

    def __init__(self, patch: int, context: int = 4, dim: int = 32, seed: int = 0,
                 epochs: int = 3, mask_ratio: float = 0.5, batch_size: int = 256,
                 fit_images: int = 20000, lr: float = 2e-3,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 device: str | torch.device = "cpu") -> None:
        self.patch = check_int(patch, "patch", 1)
        self.context = check_int(context, "context", 0)
        self.dim = check_int(dim, "dim", 1)
        if self.dim % HEADS:
            raise ParameterError(f"MAE dim must be a multiple of {HEADS} (attention heads), "
                                 f"got {dim}")
        self.seed = check_int(seed, "seed", 0)
        self.epochs = check_int(epochs, "epochs", 1)
        if not (isinstance(mask_ratio, float | int) and 0 < mask_ratio < 1):
            raise ParameterError(f"mask_ratio must be a number in (0, 1), got {mask_ratio!r}")
        self.mask_ratio = float(mask_ratio)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.fit_images = check_int(fit_images, "fit_images", 1)
        if not (isinstance(lr, float | int) and math.isfinite(lr) and lr > 0):
            raise ParameterError(f"lr must be a finite number > 0, got {lr!r}")
        self.lr = float(lr)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.progress = progress
        self.device = torch.device(device)
        self.image_shape: tuple[int, ...] | None = None
        self.model: PatchMAE | None = None
        self.losses: list[float] = []

    def _settings(self) -> dict:
        return {"format_version": CACHE_VERSION, "patch": self.patch, "context": self.context,
                "dim": self.dim, "heads": HEADS, "layers": LAYERS, "seed": self.seed,
                "epochs": self.epochs, "mask_ratio": self.mask_ratio,
                "batch_size": self.batch_size, "fit_images": self.fit_images, "lr": self.lr}

    def _new_model(self) -> PatchMAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return PatchMAE(*self.image_shape, self.patch, self.context, self.dim)

    def fit(self, images: np.ndarray) -> MAEFeaturiser:
        """Train on uint8 images [N, H, W, C] (or load the cached model trained on them)."""
        images = check_images(images)
        patch_grid(images.shape[1], images.shape[2], self.patch)
        self.image_shape = tuple(images.shape[1:])
        inputs = {"settings": self._settings(), "images": _fingerprint(images)}
        folder = (None if self.cache_dir is None
                  else self.cache_dir / f"mae-{persist.cache_key(inputs)}")
        model = self._new_model()
        if folder is not None and folder.is_dir():
            self.losses = _load(model, folder, inputs)
        else:
            count = min(len(images), self.fit_images)
            rng = np.random.default_rng(self.seed)
            chosen = np.sort(rng.choice(len(images), count, replace=False))
            x = _to_tensor(images[chosen])
            model.to(self.device)
            self.losses = train_mae(model, x, epochs=self.epochs, mask_ratio=self.mask_ratio,
                                    batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                                    progress=self.progress)
            if folder is not None:
                persist.save_once(folder, dict(model.named_parameters()),
                                  {**inputs, "losses": self.losses}, MODEL_TYPE)
        self.model = model.to(self.device).eval()
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, C] (the fitted size) -> float32 features [N, num_patches,
        dim]: the encoder's tokens without masking."""
        images = check_fitted_images(images, self.image_shape, "MAEFeaturiser")
        out = []
        starts = range(0, len(images), self.batch_size)
        with torch.inference_mode():
            for lo in tqdm(starts, desc="MAE features", unit="batch", disable=not self.progress):
                check_stop("computing patch features")
                x = _to_tensor(images[lo:lo + self.batch_size]).to(self.device)
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def _load(model: PatchMAE, folder: Path, inputs: dict) -> list[float]:
    """Load the cached weights into ``model`` (its parameters; a PatchMAE has no buffers);
    returns the cached epoch losses. CheckpointError when the folder was written for other
    inputs, or is incomplete, unreadable or written by an older hmmlvd (no ``format_version``
    or ``model_type`` in its config): the message says to delete it, and the next fit retrains
    and caches the model again."""
    try:
        config = persist.read_config(folder, MODEL_TYPE, "MAE cache")
    except CheckpointError as exc:
        raise _unusable(folder, exc) from exc
    if {k: config.get(k) for k in inputs} != inputs:
        raise CheckpointError(f"{folder} was written for other settings or images; "
                              f"delete it")
    try:
        losses = [float(v) for v in config["losses"]]
        persist.load_into(model, folder)
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise _unusable(folder, exc) from exc
    return losses


def _unusable(folder: Path, exc: Exception) -> CheckpointError:
    """The error for a cache entry that cannot be read, naming it and the fix."""
    return CheckpointError(f"MAE cache {folder} is incomplete or unreadable ({exc}); "
                           f"delete it to retrain")
