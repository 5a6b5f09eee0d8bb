"""Image LVD end to end: distil (:func:`hmmlvd.lvd.image.distill.distil_patches`: features ->
k-means patch latents -> structures and initial parameters), then the paper's three EM stages,
each a verb of the model: (a) :meth:`PatchCircuit.fit_parts
<hmmlvd.image.patch_circuit.PatchCircuit.fit_parts>`, every sub-circuit on the patches of its
latent value; (b) the top circuit's ``fit`` on the latent labels; (c) :meth:`PatchCircuit.fit
<hmmlvd.image.patch_circuit.PatchCircuit.fit>`, the whole circuit on the pixels, scored on
held-out images and checkpointed. What ``hmmlvd image train --model lvd`` runs (through
:func:`hmmlvd.pipelines.image_models.train_image_model`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int
from hmmlvd.data.images import flatten
from hmmlvd.em.checkpoints import EMCheckpoints, check_resumed
from hmmlvd.em.config import EMConfig
from hmmlvd.image.patch_circuit import PatchCircuit
from hmmlvd.lvd.image.distill import PatchLVDConfig, distil_patches, flag


@dataclass(frozen=True)
class LVDStages:
    """How the EM of stages (a) and (b) differs from stage (c)'s
    :class:`~hmmlvd.em.config.EMConfig` (the run's; its batch size, step sizes and their
    anneal, pseudocount, seed and, for stage (a), leaf prior are shared), checked when made:

    - ``stage_a_epochs`` / ``stage_b_epochs``: their own number of mini-batch epochs;
    - no held-out scoring (``patience`` 0) and no full-batch epochs: they are pretraining on
      patches and latent labels, with no held-out patches or labels to score, and the model
      they leave is what stage (c) starts from and validates;
    - the pseudocount is added per batch: stage (a)'s sub-circuits each see their own number of
      patches, so a prior over "the training set" has no one size, and stage (b) smooths as
      stage (a) does;
    - stage (b)'s leaf prior is uniform: its inputs are the C latent values, not pixels."""

    stage_a_epochs: int = 5
    stage_b_epochs: int = 20

    def __post_init__(self) -> None:
        for name in ("stage_a_epochs", "stage_b_epochs"):
            check_int(getattr(self, name), flag(name), 0)

    def stage_a(self, em: EMConfig) -> EMConfig:
        """Stage (a)'s EM settings from stage (c)'s ``em``."""
        return dataclasses.replace(em, epochs=self.stage_a_epochs, patience=0,
                                   final_full_batch=0, pseudocount_per="batch")

    def stage_b(self, em: EMConfig) -> EMConfig:
        """Stage (b)'s EM settings from stage (c)'s ``em``."""
        return dataclasses.replace(self.stage_a(em), epochs=self.stage_b_epochs,
                                   leaf_prior="uniform")


def held_out_pixels(valid_images: np.ndarray | None, shape: tuple) -> torch.Tensor | None:
    """Held-out images [M, H, W, C] as the flat pixels stage (c) scores, or None."""
    if valid_images is None:
        return None
    valid_images = np.asarray(valid_images)
    if valid_images.ndim != 4 or tuple(valid_images.shape[1:]) != tuple(shape):
        raise DataError(f"held-out images must be [M, {', '.join(map(str, shape))}] like the "
                        f"training images, got shape {valid_images.shape}")
    return torch.as_tensor(flatten(valid_images))


def train_image_lvd(train_images: np.ndarray, lvd: PatchLVDConfig, em: EMConfig,
                    stages: LVDStages | None = None, progress: bool = True,
                    device: str | torch.device = "cpu",
                    valid_images: np.ndarray | None = None,
                    checkpoints: EMCheckpoints | None = None,
                    resumed: PatchCircuit | None = None) -> tuple[PatchCircuit, dict]:
    """Distil ``train_images`` [N, H, W, C] (uint8 pixel levels) with ``lvd`` and train the
    result: stages (a) and (b) with ``stages`` (default :class:`LVDStages`) applied to ``em``,
    stage (c) with ``em``. Returns the circuit and a history: the mean log-likelihood of each
    epoch of ``stage_a`` (per patch), ``stage_b`` (per image's labels) and ``stage_c`` (per
    image), ``valid`` (held-out, per stage-(c) epoch, with ``valid_images`` [M, H, W, C]: the
    best epoch is kept and ``em.patience`` may stop stage (c) early), and ``timings`` (seconds
    of features, latents, structure, stage_a, stage_b, stage_c). ``checkpoints``: stage (c)
    is saved as it goes (:class:`~hmmlvd.em.checkpoints.EMCheckpoints`, first at its start, with
    the history of the earlier steps as its record); ``resumed``: the model read back from
    them (``checkpoints.resume()``): only stage (c) goes on. A stop request (Ctrl-C, SIGTERM)
    before stage (c) ends the run within a step, without a checkpoint."""
    stages = LVDStages() if stages is None else stages
    train_images = np.asarray(train_images)
    if train_images.ndim != 4 or len(train_images) < 2:
        raise DataError(f"training images must be [N >= 2, H, W, C], got {train_images.shape}")
    valid = held_out_pixels(valid_images, train_images.shape[1:])
    pixels = torch.as_tensor(flatten(train_images))  # [N, D]
    if resumed is not None:
        checkpoints = check_resumed(checkpoints)
        history = dict(checkpoints.record.get("history", {}))
        history["timings"] = dict(history.get("timings", {}))
        started = time.perf_counter()
        resumed.fit(pixels, em, valid=valid, progress=progress, checkpoints=checkpoints,
                    desc="LVD stage c")
        earlier = checkpoints.seconds_before - sum(history["timings"].values())
        history["timings"]["stage_c"] = max(earlier, 0.0) + time.perf_counter() - started
        return resumed, _with_stage_c(resumed, history, valid)
    distilled = distil_patches(train_images, lvd, progress, device)
    model, timings = distilled.model, distilled.timings
    lap_started = time.perf_counter()

    def lap(name: str) -> None:
        """Record the seconds since the previous lap as step ``name``."""
        nonlocal lap_started
        now = time.perf_counter()
        timings[name], lap_started = now - lap_started, now

    history: dict = {"timings": timings}
    model.fit_parts(pixels, distilled.labels, stages.stage_a(em), progress=progress,
                    desc="LVD stage a")
    history["stage_a"] = model.fit_history
    lap("stage_a")
    model.top.fit(torch.as_tensor(distilled.labels, device=device), stages.stage_b(em),
                  progress=progress, desc="LVD stage b")
    history["stage_b"] = model.top.fit_history
    lap("stage_b")
    if checkpoints is not None:  # what a resumed stage (c) reports besides its own epochs
        checkpoints.record = {"history": {**history, "timings": dict(timings)}}
    model.fit(pixels, em, valid=valid, progress=progress, checkpoints=checkpoints,
              desc="LVD stage c")
    lap("stage_c")
    return model, _with_stage_c(model, history, valid)


def _with_stage_c(model: PatchCircuit, history: dict, valid: torch.Tensor | None) -> dict:
    """``history`` with stage (c)'s epochs (and held-out scores) added."""
    history["stage_c"] = model.fit_history
    if valid is not None:
        history["valid"] = model.valid_history
    return history
