"""Patch-based latent variable distillation for image circuits (see ``hmmlvd.image.patch_circuit``).

Distillation only, as for text (:mod:`hmmlvd.lvd.text.distill`): patch features
(``make_featuriser``) -> per-position k-means latents Z_i with C values (``patch_latents``) ->
the circuit's structure from them (one Chow–Liu tree per (position, latent value) from the
patches labelled so, one over the latents) with its initial parameters. The EM that trains the
result is the model's: :meth:`PatchCircuit.fit_parts
<hmmlvd.image.patch_circuit.PatchCircuit.fit_parts>` (stage (a): each sub-circuit on its own
patches), the top circuit's ``fit`` on the labels (stage (b)) and :meth:`PatchCircuit.fit
<hmmlvd.image.patch_circuit.PatchCircuit.fit>` on the pixels (stage (c)), run in order by
:func:`hmmlvd.pipelines.image_lvd.train_image_lvd`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import SEED_LIMIT, check_int
from hmmlvd.data.patches import check_context, split_patches
from hmmlvd.em.stop import check_stop
from hmmlvd.image.baselines import check_tree_bins
from hmmlvd.image.patch_circuit import PatchCircuit
from hmmlvd.lvd.image.features import patch_latents
from hmmlvd.lvd.image.featurisers import FEATURISERS, make_featuriser
from hmmlvd.pc.structures import RegionGraph, learn_hclt

NUM_LEVELS = 256  # pixel values are categories 0..255


def flag(name: str) -> str:
    """The flag of setting ``name`` in messages (``num_latents`` -> ``--num-latents``): what the
    command line calls it, and the field's name with dashes."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class PatchLVDConfig:
    """Settings of :func:`distil_patches`, checked when made (DataError naming the setting by
    its flag of ``hmmlvd image train --model lvd``: ``num_latents`` is ``--num-latents``).

    patch: patch side (must divide the image sides); num_latents: C, values of each patch
    latent; sub_units / top_units: hidden size K of the sub-PCs (HCLT per patch and latent
    value) and of the top HCLT over the latents; featuriser: "pca" or "mae"; feature_dim: size
    of a patch feature; context: pixels of context around each patch that its feature sees (in
    [0, the images' shorter side], checked when the images come: ``check_context``);
    tree_bins: grey levels are binned to this many values to learn the Chow–Liu trees; seed:
    seeds the featuriser, k-means and the initial parameters; cache_dir: where featurisers
    cache what they train (None: no cache); tie_inputs: sub-circuits of a patch position share
    input distributions (see :class:`~hmmlvd.image.patch_circuit.PatchCircuit`). The EM of the
    stages is an :class:`~hmmlvd.em.config.EMConfig` (:mod:`hmmlvd.pipelines.image_lvd`)."""

    patch: int = 7
    num_latents: int = 16
    sub_units: int = 8
    top_units: int = 16
    featuriser: str = "pca"
    feature_dim: int = 32
    context: int = 4
    tree_bins: int = 8
    seed: int = 0
    cache_dir: str | None = None
    tie_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("patch", "num_latents", "sub_units", "top_units", "feature_dim"):
            check_int(getattr(self, name), flag(name), 1)
        if isinstance(self.context, bool) or not isinstance(self.context, int | np.integer):
            raise DataError(f"--context must be an integer, got {self.context!r}")
        check_tree_bins(self.tree_bins)
        if check_int(self.seed, flag("seed"), 0) >= SEED_LIMIT:
            raise DataError(f"{flag('seed')} must lie in [0, 2**63), got {self.seed}")
        if self.featuriser not in FEATURISERS:
            raise DataError(f"{flag('featuriser')} must be one of {', '.join(FEATURISERS)}, "
                            f"got {self.featuriser!r}")
        if not isinstance(self.tie_inputs, bool):
            raise DataError(f"{flag('tie_inputs')} must be True or False, got "
                            f"{self.tie_inputs!r}")


@dataclass
class PatchDistillation:
    """What distillation gives: ``model``, the patch circuit over the latents' structures with
    its initial parameters (on the device asked for); ``labels`` [N, n], the latent value of
    every training image's patches; ``timings``: seconds of ``features``, ``latents`` and
    ``structure``."""

    model: PatchCircuit
    labels: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def structures(patches: np.ndarray, labels: np.ndarray, num_latents: int, num_categories: int,
               bins: int) -> tuple[list[RegionGraph], RegionGraph]:
    """HCLT region graphs: one per sub-circuit (i, c), learned from the patches at position i
    assigned to c (from all patches at i when fewer than 2 are), and the top one over the
    latents. ``patches`` [N, n, P], ``labels`` [N, n]. A stop request ends it after the
    current tree (:func:`~hmmlvd.em.stop.check_stop`)."""
    subs = []
    for i in range(patches.shape[1]):
        pooled = None
        for c in range(num_latents):
            check_stop("learning a Chow–Liu tree")
            mine = patches[labels[:, i] == c, i]
            if len(mine) < 2:
                if pooled is None:
                    pooled = learn_hclt(patches[:, i], num_categories, bins)
                subs.append(pooled)
            else:
                subs.append(learn_hclt(mine, num_categories, bins))
    return subs, learn_hclt(labels, num_latents)


def distil_patches(train_images: np.ndarray, config: PatchLVDConfig, progress: bool = True,
                   device: str | torch.device = "cpu") -> PatchDistillation:
    """Distil ``train_images`` [N >= 2, H, W, C] (uint8 pixel levels) into the patch-latent
    circuit's starting point: features, k-means latents per patch position, the Chow–Liu
    structures they imply and a :class:`PatchCircuit` over them (random initial parameters
    seeded by ``config.seed``). A stop request ends it within a step (a k-means round, a tree)
    without a checkpoint."""
    train_images = np.asarray(train_images)
    if train_images.ndim != 4 or len(train_images) < 2:
        raise DataError(f"training images must be [N >= 2, H, W, C], got {train_images.shape}")
    check_context(config.context, train_images.shape[1:])
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        """Record the seconds since the previous lap as step ``name``."""
        timings[name] = time.perf_counter() - started - sum(timings.values())

    featuriser = make_featuriser(config.featuriser, config.patch, context=config.context,
                                 dim=config.feature_dim, seed=config.seed,
                                 cache_dir=config.cache_dir, progress=progress)
    features = featuriser.fit(train_images).transform(train_images)
    lap("features")
    labels = np.asarray(patch_latents(features, config.num_latents, seed=config.seed,
                                      progress=progress))
    lap("latents")
    patches = split_patches(train_images, config.patch).astype(np.int64)  # [N, n, P]
    subs, top = structures(patches, labels, config.num_latents, NUM_LEVELS, config.tree_bins)
    model = PatchCircuit(train_images.shape[1:], config.patch, subs, top, config.num_latents,
                         config.sub_units, config.top_units, NUM_LEVELS, config.seed,
                         config.tie_inputs).to(device)
    lap("structure")
    return PatchDistillation(model, labels, timings)
