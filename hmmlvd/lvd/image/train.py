"""Patch-based latent variable distillation for image circuits (see ``hmmlvd.image.patch_circuit``).

Pipeline: patch features (``patch_features``) -> per-position k-means latents Z_i with C values
-> (a) each sub-PC (i, c) trained by EM on the patches assigned to c only -> (b) the top
circuit fitted to the latent assignments -> (c) the whole circuit finetuned by mini-batch EM on
the pixels alone (``PatchCircuit.fit``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.data.images import flatten
from hmmlvd.data.patches import split_patches
from hmmlvd.em import Learner, epoch_seed, run_epochs
from hmmlvd.em.checkpoints import EMCheckpoints, check_resumed
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import check_stop, stop_requested
from hmmlvd.image.patch_circuit import PatchCircuit
from hmmlvd.lvd.image.features import patch_latents
from hmmlvd.lvd.image.featurisers import make_featuriser
from hmmlvd.pc.em import CIRCUIT_EM, fit_em
from hmmlvd.pc.structures import RegionGraph, learn_hclt

NUM_LEVELS = 256  # pixel values are categories 0..255


@dataclass
class PatchLVDConfig:
    """Settings of :func:`train_patch_lvd`.

    patch: patch side (must divide the image sides); num_latents: C, values of each patch
    latent; sub_units / top_units: hidden size K of the sub-PCs (HCLT per patch and latent
    value) and of the top HCLT over the latents; featuriser: "pca" or "mae"; feature_dim: size
    of a patch feature; context: pixels of context around each patch that its feature sees;
    tree_bins: grey levels are binned to this many values to learn the Chow–Liu trees;
    *_epochs: EM epochs of stages (a), (b), (c); batch_size, step_size, pseudocount: mini-batch
    EM settings; cache_dir: where featurisers cache what they train (None: no cache);
    tie_inputs: sub-circuits of a patch position share input distributions (see
    :class:`~hmmlvd.image.patch_circuit.PatchCircuit`); patience: stage (c) stops after this
    many epochs without a better held-out log-likelihood (with ``valid_images``; 0: never
    early; the best epoch is kept either way); final_full_batch: stage (c) then runs this
    many full-batch epochs at step size 1 (see :class:`~hmmlvd.em.config.EMConfig`); leaf_prior:
    "uniform" or "marginal", how stages (a) and (c) spread the pseudocount of the sub-circuits'
    pixel distributions (:meth:`PatchCircuit.set_leaf_prior`); pseudocount_per: "batch" or
    "data", what stage (c)'s pseudocount is added to (see :class:`~hmmlvd.em.config.EMConfig`);
    final_step_size: if given, each stage's mini-batch epochs anneal the step size linearly
    from step_size to it (as the LVD paper trains)."""

    patch: int = 7
    num_latents: int = 16
    sub_units: int = 8
    top_units: int = 16
    featuriser: str = "pca"
    feature_dim: int = 32
    context: int = 4
    tree_bins: int = 8
    stage_a_epochs: int = 5
    stage_b_epochs: int = 20
    stage_c_epochs: int = 2
    batch_size: int = 256
    step_size: float = 0.1
    pseudocount: float = 0.01
    seed: int = 0
    cache_dir: str | None = None
    tie_inputs: bool = False
    patience: int = 0
    final_full_batch: int = 0
    leaf_prior: str = "uniform"
    pseudocount_per: str = "batch"
    final_step_size: float | None = None

    def __post_init__(self) -> None:
        _stage_c_settings(self)  # checks the EM fields as EMConfig does


def group_batches(labels: np.ndarray, num_latents: int, batch_size: int, seed: int,
                  epoch: int) -> Iterator[np.ndarray]:
    """One stage-(a) epoch: [B, G] sample ids, column g = i * C + c listing (shuffled, the
    order fixed by (``seed``, ``epoch``) as every EM epoch's: :func:`hmmlvd.em.epoch_seed`)
    the samples whose patch i has latent c, -1 where a group has run out. Every sample's patch
    appears once in its group's column; the epoch lasts as long as the largest group."""
    generator = np.random.default_rng(epoch_seed(seed, epoch))
    n = labels.shape[1]
    members = [np.flatnonzero(labels[:, i] == c) for i in range(n) for c in range(num_latents)]
    longest = max(len(m) for m in members)
    columns = np.full((-(-longest // batch_size) * batch_size, len(members)), -1, np.int64)
    for g, ids in enumerate(members):
        columns[:len(ids), g] = generator.permutation(ids)
    yield from columns.reshape(-1, batch_size, len(members))


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


def em_settings(config: PatchLVDConfig, epochs: int) -> EMConfig:
    """The mini-batch EM settings of a stage of ``epochs`` epochs (the rest: circuits')."""
    return replace(CIRCUIT_EM, epochs=epochs, batch_size=config.batch_size,
                   step_size=config.step_size, pseudocount=config.pseudocount, seed=config.seed,
                   final_step_size=config.final_step_size)


def _held_out(valid_images: np.ndarray | None, shape: tuple) -> torch.Tensor | None:
    """Held-out images [M, H, W, C] as the flat pixels stage (c) scores, or None."""
    if valid_images is None:
        return None
    valid_images = np.asarray(valid_images)
    if valid_images.ndim != 4 or tuple(valid_images.shape[1:]) != tuple(shape):
        raise DataError(f"held-out images must be [M, {', '.join(map(str, shape))}] like the "
                        f"training images, got shape {valid_images.shape}")
    return torch.as_tensor(flatten(valid_images))


def train_patch_lvd(train_images: np.ndarray, config: PatchLVDConfig, progress: bool = True,
                    device: str | torch.device = "cpu",
                    valid_images: np.ndarray | None = None,
                    checkpoints: EMCheckpoints | None = None,
                    resumed: PatchCircuit | None = None) -> tuple[PatchCircuit, dict]:
    """Distil, build and train the patch-latent circuit of ``train_images`` [N, H, W, C]
    (uint8 pixel levels). Returns the circuit and a history: per-stage mean log-likelihoods
    per epoch and seconds per step of the pipeline. ``valid_images`` [M, H, W, C]: held-out
    images scored after every stage-(c) epoch (``history["valid"]``); the best epoch is kept
    and ``config.patience`` may stop stage (c) early. ``checkpoints``: stage (c) is saved as
    it goes (:class:`~hmmlvd.em.checkpoints.EMCheckpoints`, first at its start, with the history of
    stages (a) and (b) as the record); ``resumed``: the model read back from them
    (``checkpoints.resume()``): stages (a) and (b) are not run again."""
    if train_images.ndim != 4 or len(train_images) < 2:
        raise DataError(f"training images must be [N >= 2, H, W, C], got {train_images.shape}")
    valid = _held_out(valid_images, train_images.shape[1:])
    if resumed is not None:
        checkpoints = check_resumed(checkpoints)
        history = dict(checkpoints.record.get("history", {}))
        history["timings"] = dict(history.get("timings", {}))
        started = time.perf_counter()
        resumed.fit(torch.as_tensor(flatten(train_images)), _stage_c_settings(config),
                    valid=valid, progress=progress, checkpoints=checkpoints)
        earlier = checkpoints.seconds_before - sum(history["timings"].values())
        history["timings"]["stage_c"] = max(earlier, 0.0) + time.perf_counter() - started
        return resumed, _stage_c_history(resumed, history, valid)
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
    pixels = torch.as_tensor(flatten(train_images))  # [N, D], stage (c)'s data
    model.set_leaf_prior(config.leaf_prior, pixels)
    lap("structure")
    history: dict = {"timings": timings}
    history["stage_a"] = _stage_a(model, patches, labels, config, progress)
    lap("stage_a")
    history["stage_b"] = fit_em(model.top, torch.as_tensor(labels, device=device),
                                em_settings(config, config.stage_b_epochs),
                                progress=progress, desc="LVD stage b")
    lap("stage_b")
    if checkpoints is not None:  # what a resumed stage (c) reports besides its own epochs
        checkpoints.record = {"history": {**history, "timings": dict(timings)}}
    model.fit(pixels, _stage_c_settings(config), valid=valid,
              progress=progress, checkpoints=checkpoints)
    lap("stage_c")
    return model, _stage_c_history(model, history, valid)


def _stage_c_settings(config: PatchLVDConfig) -> EMConfig:
    """Stage (c)'s EM settings: mini-batch epochs with early stopping, then full-batch."""
    return replace(em_settings(config, config.stage_c_epochs), patience=config.patience,
                   final_full_batch=config.final_full_batch, leaf_prior=config.leaf_prior,
                   pseudocount_per=config.pseudocount_per)


def _stage_c_history(model: PatchCircuit, history: dict, valid: torch.Tensor | None) -> dict:
    """``history`` with stage (c)'s epochs (and held-out scores) added."""
    history["stage_c"] = model.fit_history
    if valid is not None:
        history["valid"] = model.valid_history
    return history


class _StageA(Learner):
    """Stage (a) as a :class:`~hmmlvd.em.loop.Learner`: a batch is [B, G] sample ids (one
    column per sub-circuit), the E-step adds each sub-circuit's counts from its own patches."""

    def __init__(self, model: PatchCircuit, patches: np.ndarray, num_latents: int):
        self.model, self.patches = model, patches
        self.position = np.repeat(np.arange(patches.shape[1]), num_latents)  # group -> patch

    def e_step(self, ids: np.ndarray) -> tuple[float, float]:
        present = ids >= 0
        batch = torch.as_tensor(self.patches[np.maximum(ids, 0), self.position[None, :]])
        return self.model.group_accumulate(batch.to(self.model.device),
                                           torch.as_tensor(present))

    def m_step(self, step_size: float, pseudocount: float) -> None:
        self.model.group_maximize(step_size, pseudocount)

    def discard(self) -> None:
        self.model.discard_counts()


def _stage_a(model: PatchCircuit, patches: np.ndarray, labels: np.ndarray,
             config: PatchLVDConfig, progress: bool) -> list[float]:
    """Stage (a): every sub-circuit (i, c) trained by EM on the patches at i labelled c, with
    the one EM loop (:func:`hmmlvd.em.loop.run_epochs`); returns the mean log-likelihood per
    patch of each epoch. It writes no checkpoint: a stop request ends it after the current
    batch (:func:`~hmmlvd.em.stop.check_stop`), and a stopped run starts over."""
    num_batches = -(-max(np.bincount(labels[:, i], minlength=config.num_latents).max()
                         for i in range(labels.shape[1])) // config.batch_size)

    def batches(epoch: int, full_batch: bool, start: int) -> Iterator[np.ndarray]:
        return group_batches(labels, config.num_latents, config.batch_size, config.seed, epoch)

    stats = run_epochs(_StageA(model, patches, config.num_latents),
                       em_settings(config, config.stage_a_epochs).epoch_plan(),
                       config.pseudocount, batches, num_batches, progress=progress,
                       desc="LVD stage a", stop_requested=lambda: bool(stop_requested()),
                       on_stop=lambda state, full_batch: check_stop("running LVD stage a"))
    return [s.mean_log_likelihood for s in stats]
