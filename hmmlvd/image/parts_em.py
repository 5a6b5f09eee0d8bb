"""EM of a patch circuit's sub-circuits alone, each on its own patches (stage (a) of image LVD):
:meth:`PatchCircuit.fit_parts <hmmlvd.image.patch_circuit.PatchCircuit.fit_parts>`.

Sub-circuit g = i * C + c learns from the patches at position i of the images whose latent Z_i
is c. The G groups share no parameters, so one step trains all of them: a batch is [B, G] image
ids, column g listing (shuffled) the images of group g, -1 where a group has run out; the
E-step gathers each group's own patch from its image (:meth:`PatchCircuit.group_accumulate`).
The epoch loop is the one every model runs (:func:`hmmlvd.em.loop.run_epochs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_id_tensor
from hmmlvd.em import Learner, epoch_seed, run_epochs
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import check_stop, stop_requested
from hmmlvd.pc.em import check_circuit_config, check_training_data

if TYPE_CHECKING:  # patch_circuit.py imports this module (PatchCircuit.fit_parts)
    from hmmlvd.image.patch_circuit import PatchCircuit


def group_batches(labels: np.ndarray, num_latents: int, batch_size: int, seed: int,
                  epoch: int) -> Iterator[np.ndarray]:
    """One epoch: [B, G] sample ids, column g = i * C + c listing (shuffled, the order fixed by
    (``seed``, ``epoch``) as every EM epoch's: :func:`hmmlvd.em.epoch_seed`) the samples whose
    patch i has latent c (``labels`` [N, n]), -1 where a group has run out. Every sample's
    patch appears once in its group's column; the epoch lasts as long as the largest group."""
    generator = np.random.default_rng(epoch_seed(seed, epoch))
    n = labels.shape[1]
    members = [np.flatnonzero(labels[:, i] == c) for i in range(n) for c in range(num_latents)]
    longest = max(len(m) for m in members)
    columns = np.full((-(-longest // batch_size) * batch_size, len(members)), -1, np.int64)
    for g, ids in enumerate(members):
        columns[:len(ids), g] = generator.permutation(ids)
    yield from columns.reshape(-1, batch_size, len(members))


class PartsLearner(Learner):
    """The sub-circuits' side of :func:`~hmmlvd.em.loop.run_epochs`: a batch is [B, G] sample
    ids (:func:`group_batches`), the E-step adds each sub-circuit's counts from its own
    patches ``patches`` [N, n, P]; the model keeps the counts."""

    def __init__(self, model: PatchCircuit, patches: np.ndarray):
        self.model, self.patches = model, patches
        self.position = np.repeat(np.arange(patches.shape[1]), model.num_latents)  # g -> i

    def e_step(self, ids: np.ndarray) -> tuple[float, float]:
        present = ids >= 0
        batch = torch.as_tensor(self.patches[np.maximum(ids, 0), self.position[None, :]])
        return self.model.group_accumulate(batch.to(self.model.device),
                                           torch.as_tensor(present))

    def m_step(self, step_size: float, pseudocount: float) -> None:
        self.model.group_maximize(step_size, pseudocount)

    def discard(self) -> None:
        self.model.discard_counts()


def check_labels(labels: object, num_samples: int, num_patches: int,
                 num_latents: int) -> np.ndarray:
    """``labels`` as an int64 [N, n] array of latent values in [0, C); DataError otherwise."""
    labels = as_id_tensor(labels, "latent labels").cpu().numpy()
    if labels.shape != (num_samples, num_patches):
        raise DataError(f"latent labels must be [{num_samples}, {num_patches}] (one per image "
                        f"and patch), got shape {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() < num_latents:
        raise DataError(f"latent labels must lie in [0, {num_latents}), got "
                        f"[{labels.min()}, {labels.max()}]")
    return labels


def fit_parts(model: PatchCircuit, data: object, labels: object, config: EMConfig,
              progress: bool = True, desc: str = "EM sub-circuits") -> list[float]:
    """Train every sub-circuit (i, c) of ``model`` by EM on the patches at position i of the
    images ``data`` [N, D] whose ``labels`` [N, n] value at i is c, with ``config``'s schedule
    (:meth:`~hmmlvd.em.config.EMConfig.epoch_plan`), batch size (per group), step sizes, seed
    and leaf prior (spread by the pixel histograms of ``data`` for "marginal"); the top circuit
    is untouched. Returns the mean log-likelihood per patch of each epoch. A group without
    patches keeps its parameters. No checkpoints: a stop request
    (:func:`~hmmlvd.em.stop.check_stop`) ends it after the current batch, raising
    :class:`~hmmlvd.em.stop.StoppedBeforeCheckpoint` ("running ``desc``").

    ``config.pseudocount_per`` must be "batch": each sub-circuit sees its own number of
    patches, so a prior over "the training set" has no one size; ``config.patience`` must be
    0 (nothing held out is scored)."""
    check_circuit_config(config)
    if config.pseudocount_per != "batch":
        raise DataError("fitting the sub-circuits needs pseudocount_per 'batch': each sees its "
                        "own number of patches, so a prior over the data has no one size")
    if config.patience:
        raise DataError("fitting the sub-circuits scores no held-out data: give patience 0")
    data, _ = check_training_data(data, model.num_variables)
    labels = check_labels(labels, len(data), model.num_patches, model.num_latents)
    pixels = data.cpu().numpy()
    if pixels.size and not 0 <= pixels.min() <= pixels.max() < model.num_categories:
        raise DataError(f"pixel values must lie in [0, {model.num_categories}), got "
                        f"[{pixels.min()}, {pixels.max()}]")
    patches = pixels.astype(np.int64)[:, model.patch_index.cpu().numpy()]  # [N, n, P]
    model.set_leaf_prior(config.leaf_prior, data)
    largest = max(int(np.bincount(labels[:, i], minlength=model.num_latents).max())
                  for i in range(labels.shape[1]))
    num_batches = -(-largest // config.batch_size)

    def batches(epoch: int, full_batch: bool, start: int) -> Iterator[np.ndarray]:
        return group_batches(labels, model.num_latents, config.batch_size, config.seed, epoch)

    stats = run_epochs(PartsLearner(model, patches), config.epoch_plan(),
                       lambda full_batch: config.step_pseudocount(full_batch, len(data)),
                       batches, num_batches, progress=progress, desc=desc,
                       stop_requested=lambda: bool(stop_requested()),
                       on_stop=lambda state, full_batch: check_stop(f"running {desc}"))
    return [s.mean_log_likelihood for s in stats]
