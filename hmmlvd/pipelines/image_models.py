"""Image models end to end, what ``hmmlvd image`` and ``scripts/image_bpd.py`` run: build and
train a baseline circuit (HCLT, PD, RAT-SPN: :mod:`hmmlvd.image.baselines`) or image LVD
(:func:`hmmlvd.pipelines.image_lvd.train_image_lvd`) on images [N, H, W, C] of 256 grey
levels, measure bits per dimension, save and load the model with an ``image.json`` record of
what it models.

Every model here is a :class:`~hmmlvd.pc.circuit.Circuit` or a
:class:`~hmmlvd.image.patch_circuit.PatchCircuit`; both have the verbs ``fit``, ``score``,
``log_likelihood``, ``sample``, ``inpaint`` and ``save_pretrained``, so nothing below asks
which one it holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmmlvd.core.allocator import keep_freed_memory
from hmmlvd.core.atomic import atomic_write_json
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.data.images import flatten
from hmmlvd.em.checkpoints import EMCheckpoints, check_resumed
from hmmlvd.em.config import EMConfig
from hmmlvd.image import memory as image_memory
from hmmlvd.image.baselines import BASELINES, StructureConfig, baseline_from_config
from hmmlvd.image.loading import load_pretrained
from hmmlvd.image.patch_circuit import PatchCircuit
from hmmlvd.pc.bpd import evaluate_bpd
from hmmlvd.pc.circuit import Circuit

MODELS = ("lvd", *BASELINES)
LEVELS = 256  # pixels are categorical grey levels 0..255
IMAGE_FILE = "image.json"  # beside config.json: what the model's variables are
#: Image shapes of the datasets, to read models saved without an image.json.
DATASET_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
#: PatchLVDConfig fields set from the shared settings (size, EM seed, structure), not by name.
LVD_SHARED = ("sub_units", "seed", "tree_bins")

ImageModel = Circuit | PatchCircuit


@dataclass
class TrainedImageModel:
    """A trained model; ``history``: ``timings`` (seconds per step) and the mean training
    log-likelihood of each epoch (``em`` for a baseline; ``stage_a``, ``stage_b``,
    ``stage_c`` for LVD); ``structure``: the structure in words; ``seconds``: wall time of
    structure learning and training."""

    model: ImageModel
    history: dict
    structure: str
    seconds: float


def lvd_flag_fields() -> list[dataclasses.Field]:
    """Image LVD's own settings, one flag each: the fields of
    :class:`~hmmlvd.lvd.image.distill.PatchLVDConfig` not in :data:`LVD_SHARED`, then those of
    :class:`~hmmlvd.pipelines.image_lvd.LVDStages`."""
    from hmmlvd.lvd.image.distill import PatchLVDConfig  # hmmlvd.lvd loads faiss
    from hmmlvd.pipelines.image_lvd import LVDStages

    return [f for config in (PatchLVDConfig, LVDStages) for f in dataclasses.fields(config)
            if f.name not in LVD_SHARED]


def lvd_config(size: int, em: EMConfig, structure: StructureConfig,
               **fields: Any) -> tuple[Any, Any]:
    """Image LVD's :class:`~hmmlvd.lvd.image.distill.PatchLVDConfig` (sub-circuits of K =
    ``size``, seeded by ``em.seed``, trees binned to ``structure.tree_bins``) and
    :class:`~hmmlvd.pipelines.image_lvd.LVDStages`, both checked; ``fields``: their other
    fields by name (patch, num_latents, top_units, featuriser, stage_a_epochs, ...)."""
    from hmmlvd.lvd.image.distill import PatchLVDConfig  # hmmlvd.lvd loads faiss
    from hmmlvd.pipelines.image_lvd import LVDStages

    clash = sorted(set(fields) & set(LVD_SHARED))
    if clash:
        raise DataError(f"{clash} come from the shared size, EM and structure settings")
    known = [f.name for f in lvd_flag_fields()]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise DataError(f"unknown image LVD settings {unknown}; expected some of {known}")
    staged = {f.name for f in dataclasses.fields(LVDStages)}
    distilled = PatchLVDConfig(sub_units=size, seed=em.seed, tree_bins=structure.tree_bins,
                               **{k: v for k, v in fields.items() if k not in staged})
    return distilled, LVDStages(**{k: v for k, v in fields.items() if k in staged})


def train_image_model(kind: str, train_images: np.ndarray, size: int, em: EMConfig,
                      structure: StructureConfig | None = None,
                      lvd_fields: dict | None = None, device: str | torch.device = "cpu",
                      progress: bool = True, valid_images: np.ndarray | None = None,
                      init: Circuit | None = None, checkpoints: EMCheckpoints | None = None,
                      resumed: ImageModel | None = None) -> TrainedImageModel:
    """Build model ``kind`` (one of :data:`MODELS`) with K = ``size`` on ``train_images``
    [N, H, W, C] uint8 and train it: a baseline by ``fit`` (EM with ``em``), LVD by its
    pipeline (:func:`lvd_config` maps ``em`` and ``structure``; ``lvd_fields``: the other
    PatchLVDConfig fields). ``valid_images``: held-out images scored after every (final-stage)
    epoch; the best epoch on them is kept and ``em.patience`` may stop early. ``init``: a
    baseline circuit to continue training instead of building one (over the same pixels).
    ``checkpoints`` (:class:`~hmmlvd.em.checkpoints.EMCheckpoints`): EM saves as it goes and
    honours stop requests; ``resumed``: the model read back from them after
    ``checkpoints.resume()``, trained on from where they stood (LVD: within stage c).
    ``seconds`` then adds the time of the earlier runs up to their last checkpoint. A model
    to build is first checked to fit the device's memory with EM on its batches
    (:mod:`hmmlvd.image.memory`; :class:`~hmmlvd.core.errors.InsufficientMemoryError` naming the
    flags to lower), before any structure learning or featurising."""
    keep_freed_memory()  # EM steps and batches reuse the last one's memory
    structure = StructureConfig() if structure is None else structure
    train_images = np.asarray(train_images)
    if train_images.ndim != 4 or len(train_images) == 0:
        raise DataError(f"training images must be [N, H, W, C], got shape {train_images.shape}")
    if kind not in MODELS:
        raise DataError(f"unknown image model {kind!r}; expected one of {MODELS}")
    started = time.perf_counter()
    if checkpoints is not None:
        started -= checkpoints.seconds_before  # the earlier runs' time counts too
    if resumed is not None:
        check_resumed(checkpoints)
    if kind == "lvd":
        if init is not None:
            raise DataError("--init continues a baseline (hclt, pd, rat); image LVD builds "
                            "its own starting point")
        from hmmlvd.pipelines.image_lvd import train_image_lvd  # hmmlvd.lvd loads faiss

        config, stages = lvd_config(size, em, structure, **(lvd_fields or {}))
        if resumed is None:  # before the featuriser, k-means and trees: fail at once
            estimate = image_memory.lvd_size(
                tuple(train_images.shape[1:]), config.patch, config.num_latents,
                config.sub_units, config.top_units, LEVELS, config.tie_inputs)
            image_memory.check_training(
                estimate, em.batch_size, device,
                f"image LVD K={size}, C={config.num_latents}, top K={config.top_units}",
                "--size, --num-latents, --top-units or --batch-size")
        model, history = train_image_lvd(train_images, config, em, stages, progress=progress,
                                         device=device, valid_images=valid_images,
                                         checkpoints=checkpoints, resumed=resumed)
        return TrainedImageModel(model, history, f"{config!r}, {stages!r}, {em!r}",
                                 time.perf_counter() - started)
    if lvd_fields:
        raise DataError(f"LVD settings {sorted(lvd_fields)} belong to the lvd model only")
    shape = tuple(train_images.shape[1:])
    pixels = flatten(train_images)
    if resumed is not None:
        model = resumed.to(device)
    elif init is None:
        image_memory.check_training(  # before the Chow–Liu tree and the parameters
            image_memory.baseline_size(kind, shape, size, structure, em.seed, LEVELS),
            em.batch_size, device, f"{kind.upper()} K={size}",
            "--size, --repetitions or --batch-size" if kind == "rat"
            else "--size or --batch-size")
        model = baseline_from_config(kind, pixels, shape, size, structure, em.seed,
                                     LEVELS).to(device)
    elif init.num_variables != pixels.shape[1]:
        raise DataError(f"the initial model is over {init.num_variables} values, the images "
                        f"have {pixels.shape[1]}")
    else:
        model = init.to(device)
    built = time.perf_counter()
    if checkpoints is not None:
        if resumed is None:  # what a resumed run reports as its structure time
            checkpoints.record = {"structure_seconds": built - started}
        built = started + float(checkpoints.record.get("structure_seconds", 0.0))
    valid = None if valid_images is None else torch.as_tensor(flatten(np.asarray(valid_images)))
    model.fit(torch.as_tensor(pixels), em, valid=valid, progress=progress,
              checkpoints=checkpoints)
    history = {"timings": {"structure": built - started, "em": time.perf_counter() - built},
               "em": model.fit_history}
    if valid is not None:
        history["valid"] = model.valid_history
    described = (structure.describe(kind, shape, len(pixels)) if init is None
                 else "continued from a saved model")
    return TrainedImageModel(model, history, described, time.perf_counter() - started)


def image_bpd(model: ImageModel, images: np.ndarray, batch_size: int = 512,
              progress: bool = False) -> float:
    """Bits per dimension of ``images`` [N, H, W, C] (or [N, D]) under ``model``."""
    keep_freed_memory()  # EM steps and batches reuse the last one's memory
    images = np.asarray(images)
    pixels = flatten(images) if images.ndim == 4 else images
    if pixels.ndim != 2 or pixels.shape[1] != model.num_variables:
        raise DataError(f"the model is over {model.num_variables} pixel values, the images "
                        f"have shape {images.shape[1:]}")
    return evaluate_bpd(model.log_likelihood, pixels, batch_size, progress=progress)


def save_image_model(model: ImageModel, directory: str | Path, record: dict) -> Path:
    """``model.save_pretrained(directory)``, then ``image.json``: ``record`` (dataset, model
    kind, size, ...) with ``image_shape`` (required, [H, W, C])."""
    directory = Path(directory)
    shape = record.get("image_shape")
    if shape is None or math.prod(shape) != model.num_variables:
        raise DataError(f"image_shape {shape} does not fit a model over "
                        f"{model.num_variables} values")
    model.save_pretrained(directory)
    atomic_write_json(directory / IMAGE_FILE, {**record, "image_shape": list(shape)})
    return directory


def load_image_model(directory: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[ImageModel, dict]:
    """A model saved by :func:`save_image_model` (or any saved circuit or patch circuit) and
    its record; the record's ``image_shape`` is always set: from ``image.json``, the patch
    circuit's config, or the dataset whose images have the model's number of values."""
    directory = Path(directory)
    model = load_pretrained(directory, device=device)
    record: dict = {}
    path = directory / IMAGE_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} is damaged: {exc}") from exc
    shape = record.get("image_shape") or getattr(getattr(model, "config", None),
                                                 "image_shape", None)
    if shape is None:
        shape = next((s for s in DATASET_SHAPES.values()
                      if math.prod(s) == model.num_variables), None)
    valid = (isinstance(shape, list | tuple) and len(shape) == 3
             and all(isinstance(v, int) and v > 0 for v in shape))
    if not valid or math.prod(shape) != model.num_variables:
        raise CheckpointError(f"{directory}: cannot tell the image shape of a model over "
                              f"{model.num_variables} values (no usable {IMAGE_FILE})")
    record["image_shape"] = tuple(shape)
    return model, record
