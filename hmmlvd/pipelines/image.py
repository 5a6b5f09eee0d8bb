"""The image training pipeline: an image circuit (HCLT, PD, RAT-SPN or image LVD) trained on
MNIST or CIFAR-10 into a run folder, checkpointed (``ImageTraining(resume=True)`` continues a
stopped run), saved (model files + ``image.json``), evaluated (bits per dimension) and recorded
(``results.json``). ``hmmlvd image train`` only parses its flags into an
:class:`ImageTraining`; a script calls :func:`train_image` the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hmmlvd.core.atomic import atomic_write_json
from hmmlvd.core.errors import DataError, HMMLVDError
from hmmlvd.core.outdir import (
    IMAGE_RUN,
    clear_stopped_early,
    output_folder,
    record_started,
    record_stopped_early,
    stopped_early,
)
from hmmlvd.core.provenance import image_training_record
from hmmlvd.core.validate import check_int
from hmmlvd.data.images import ImageData, load_images
from hmmlvd.data.patches import check_context
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import StoppedBeforeCheckpoint, TrainingInterrupted, signals_request_stop
from hmmlvd.image.baselines import StructureConfig
from hmmlvd.image.loading import load_pretrained
from hmmlvd.pc.em import CIRCUIT_EM
from hmmlvd.pc.em import IMPLIED as CIRCUIT_IMPLIED
from hmmlvd.pipelines.image_models import (
    DATASET_SHAPES,
    MODELS,
    image_bpd,
    load_image_model,
    lvd_config,
    save_image_model,
    train_image_model,
)


def image_data_dir(dataset: str, data_dir: Path | None) -> Path:
    """``data_dir``, else the shared copy beside the clone (``../shared/data/<dataset>``)."""
    return Path("../shared/data") / dataset if data_dir is None else data_dir


def load_image_data(dataset: str, data_dir: Path | None, train_size: int = 0,
                    eval_size: int = 0) -> ImageData:
    """The dataset, train cut to ``train_size`` and valid / test to ``eval_size`` images (0:
    all); the error says to give ``--data-dir``."""
    check_int(train_size, "--train-size", 0)
    check_int(eval_size, "--eval-size", 0)
    folder = image_data_dir(dataset, data_dir)
    try:
        data = load_images(dataset, folder)
    except HMMLVDError as exc:
        raise type(exc)(f"cannot load {dataset} from {folder} ({exc}); give its folder with "
                        "--data-dir") from exc
    for split, n in (("train", train_size), ("valid", eval_size), ("test", eval_size)):
        if n:
            setattr(data, split, data.split(split)[:n])
    return data


@dataclass(frozen=True)
class ImageTraining:
    """Everything ``hmmlvd image train`` does. ``model`` (hclt, pd, rat, lvd) of ``size`` K
    units per region, trained with ``em`` (default :data:`~hmmlvd.pc.em.CIRCUIT_EM`;
    ``em.patience`` scores the valid split after every epoch; image LVD: its stage (c)), the
    baselines' ``structure`` and image LVD's own ``lvd`` settings by name (the fields of
    :class:`~hmmlvd.lvd.image.distill.PatchLVDConfig` and
    :class:`~hmmlvd.pipelines.image_lvd.LVDStages` that the shared settings do not set:
    :func:`~hmmlvd.pipelines.image_models.lvd_flag_fields`), on the first ``train_size`` training
    images of ``dataset`` (0: all) from ``data_dir``; ``init``: continue a saved baseline;
    ``resume``: continue the stopped run in ``out``; ``evaluate``: bits per dimension of valid
    and test (the first ``eval_size`` images of each, 0: all) in batches of ``batch_size``;
    ``command_line`` is recorded.

    Checked when made, before any work (DataError naming the setting by its flag of ``hmmlvd
    image train``: ``train_size`` is ``--train-size``): the model, the counts, the LVD
    settings (their configs are built), and an LVD ``context`` wider than the dataset's
    images."""

    model: str
    size: int
    out: Path
    dataset: str = "mnist"
    data_dir: Path | None = None
    train_size: int = 10_000
    eval_size: int = 0
    em: EMConfig = CIRCUIT_EM
    structure: StructureConfig = field(default_factory=StructureConfig)
    lvd: dict = field(default_factory=dict)
    init: Path | None = None
    resume: bool = False
    evaluate: bool = True
    batch_size: int = 256
    device: str | torch.device = "cpu"
    quiet: bool = False
    command_line: str = ""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise DataError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.dataset not in DATASET_SHAPES:
            raise DataError(f"--dataset must be one of {', '.join(DATASET_SHAPES)}, got "
                            f"{self.dataset!r}")
        check_int(self.size, "--size", 1)
        check_int(self.train_size, "--train-size", 0)
        check_int(self.eval_size, "--eval-size", 0)
        check_int(self.batch_size, "--batch-size", 1)
        for name, value, kind in (("em", self.em, EMConfig),
                                  ("structure", self.structure, StructureConfig)):
            if not isinstance(value, kind):
                raise DataError(f"{name} must be an instance of {kind.__name__}, got "
                                f"{type(value).__name__}")
        if self.model != "lvd":
            if self.lvd:
                raise DataError(f"LVD settings {sorted(self.lvd)} belong to --model lvd only")
            return
        distilled, _ = lvd_config(self.size, self.em, self.structure, **self.lvd)
        check_context(distilled.context, DATASET_SHAPES[self.dataset], self.dataset)

    def settings(self) -> dict:
        """What a checkpoint records and a resume must find unchanged: the model, its size,
        data, EM, structure and LVD settings and ``init``."""
        return {"model": self.model, "size": self.size, "dataset": self.dataset,
                "train_size": self.train_size,
                "init": None if self.init is None else str(self.init),
                **self.em.to_dict(), **dataclasses.asdict(self.structure), **self.lvd}


def setting_defaults() -> dict:
    """What the settings added since checkpoints were first written stood at before (their
    defaults: the behaviour of the hmmlvd that did not record them)."""
    em = CIRCUIT_EM
    return {"leaf_prior": em.leaf_prior, "pseudocount_per": em.pseudocount_per,
            "final_step_size": em.final_step_size, **CIRCUIT_IMPLIED,
            "phase2_step_size": em.phase2_step_size, "keep_checkpoints": em.keep_checkpoints}


def train_image(run: ImageTraining) -> dict:
    """Train, save and evaluate ``run`` (see the module docstring); returns what
    ``results.json`` records. ``run.out`` is checked and locked first; a stop request
    (Ctrl-C, SIGTERM) checkpoints and stops."""
    init, init_record = None, {}
    if run.init is not None:
        init, init_record = initial_model(run)
    with output_folder(run.out, IMAGE_RUN, run.resume):
        data = load_image_data(run.dataset, run.data_dir, run.train_size, run.eval_size)
        trained_on = image_training_record("image train", data.train)
        checkpoints, resumed = _checkpoints(run, trained_on)
        held_out = data.valid if run.em.patience else None  # valid decides when to stop
        if resumed is None:  # a kill before the first checkpoint: --resume starts over
            record_started(run.out)
        try:
            with signals_request_stop() as stop:  # Ctrl-C / SIGTERM: checkpoint, then stop
                checkpoints.stop_signal = lambda: stop[0]
                trained = train_image_model(run.model, data.train, run.size, run.em,
                                            run.structure, run.lvd, run.device,
                                            progress=not run.quiet, valid_images=held_out,
                                            init=init, checkpoints=checkpoints,
                                            resumed=resumed)
        except StoppedBeforeCheckpoint as exc:  # nothing saved: a resume starts over
            record_stopped_early(run.out, exc.doing)
            raise
        except Exception as exc:  # a failed run leaves a folder as it found it
            if not isinstance(exc, TrainingInterrupted) and checkpoints.latest() is None:
                clear_stopped_early(run.out)
            raise
        model = trained.model.eval()
        record = {"dataset": run.dataset, "model": run.model, "size": run.size,
                  "image_shape": list(data.shape), "train_images": len(data.train),
                  "structure": (trained.structure if init is None else
                                f"{init_record.get('structure', '?')} (continued from "
                                f"{run.init})"),
                  "command": run.command_line,
                  **({} if run.init is None else {"init": str(run.init)})}
        save_image_model(model, run.out, record)
        checkpoints.remove()  # the model is saved: nothing left to resume
        clear_stopped_early(run.out)
        result = {**record, "params": model.num_parameters(), "summary": model.summary(),
                  "train_seconds": trained.seconds, "timings": trained.history["timings"],
                  "history": {k: v for k, v in trained.history.items() if k != "timings"},
                  "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "trained_on": trained_on,
                  **({"resumed": True} if resumed is not None else {})}
        bpd = "" if not run.evaluate else "; " + evaluate_splits(
            model, data, ("valid", "test"), run.batch_size, run.quiet, result)
        atomic_write_json(run.out / "results.json", result)
    print(f"{run.dataset} {run.model} K={run.size}: {result['params']:,} parameters, "
          f"trained in {trained.seconds:.1f} s on {len(data.train):,} images{bpd} (saved in "
          f"{run.out})", flush=True)
    return result


def _checkpoints(run: ImageTraining, trained_on: dict) -> tuple[EMCheckpoints, object]:
    """The run's checkpoints in ``run.out`` and, with ``resume``, the model read back from the
    newest one (refused if it was trained with other settings or on other images than
    ``trained_on`` records). Checkpoints left there without ``resume`` were refused before
    (:func:`hmmlvd.core.outdir.output_folder`): they are never overwritten. A run stopped before
    its first checkpoint has nothing to resume: resuming starts it over."""
    checkpoints = EMCheckpoints(run.out, run.settings(), defaults=setting_defaults(),
                                trained_on=trained_on)
    if not run.resume:
        return checkpoints, None
    if checkpoints.latest() is None and stopped_early(run.out):
        print(f"{run.out}: the run stopped before its first checkpoint, nothing to resume: "
              "starting it over", flush=True)
        return checkpoints, None
    folder = checkpoints.resume()
    return checkpoints, load_pretrained(folder, device=run.device)


def initial_model(run: ImageTraining) -> tuple[object, dict]:
    """The model of ``run.init`` and its record, checked against the run's model, size and
    dataset (that it is a baseline is :func:`train_image_model`'s check)."""
    model, record = load_image_model(run.init, device=run.device)
    want = {"model": run.model, "size": run.size, "dataset": run.dataset}
    for key, value in want.items():
        if record.get(key) != value:
            raise DataError(f"--init {run.init} holds {key} {record.get(key)!r}, not "
                            f"{value!r}")
    return model, record


def evaluate_splits(model, data: ImageData, splits: Sequence[str], batch_size: int,
                    quiet: bool, result: dict) -> str:
    """Bits per dimension of each split into ``result[<split>_bpd]``; returns them in words."""
    words = []
    for split in splits:
        started = time.perf_counter()
        images = data.split(split)
        result[f"{split}_bpd"] = image_bpd(model, images, batch_size, progress=not quiet)
        result[f"{split}_images"] = len(images)
        words.append(f"{split} {result[f'{split}_bpd']:.4f} bpd ({len(images):,} images, "
                     f"{time.perf_counter() - started:.1f} s)")
    return ", ".join(words)
