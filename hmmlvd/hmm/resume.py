"""Resuming training: the model, settings and progress of the newest checkpoint that
:func:`hmmlvd.hmm.train.save_checkpoint` wrote under an output folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, DataError
from hmmlvd.core.validate import check_int
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm.model import HMM
from hmmlvd.hmm.train import BEST_FOLDER, BEST_TYPE, IMPLIED, STATE_FILE, TrainState


def load_checkpoint(out: Path, device: str = "cpu") -> tuple[HMM, EMConfig, TrainState]:
    """The model, config and state of the newest checkpoint under ``out``."""
    folder = latest_folder(out)
    try:
        raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        # "train_config": the record's name (and phases form) before the one EMConfig
        record = raw.pop("em_config") if "em_config" in raw else raw.pop("train_config")
        config = EMConfig.from_dict(record, implied=IMPLIED)
        state = TrainState(**raw)
        for name in ("epoch", "batch", "step"):
            check_int(getattr(state, name), name, 0)
        state.epoch_total, state.epoch_units = float(state.epoch_total), float(state.epoch_units)
        if not isinstance(state.run_id, str) or not isinstance(state.trained_on, dict) or \
                not isinstance(state.early, dict):
            raise TypeError("run_id must be a string, trained_on and early objects")
    except (ValueError, TypeError, KeyError, AttributeError, DataError) as exc:
        raise CheckpointError(f"{folder / STATE_FILE} is damaged or not from hmmlvd: "
                              f"{type(exc).__name__}: {exc}") from exc
    return HMM.from_pretrained(folder, device=device), config, state


def load_best(out: Path, hmm: HMM) -> dict[str, torch.Tensor]:
    """The best-epoch parameters (early stopping) of the newest checkpoint under ``out``, on
    ``hmm``'s device; empty when it has none."""
    folder = latest_folder(out) / BEST_FOLDER
    if not folder.is_dir():
        return {}
    persist.read_config(folder, BEST_TYPE, "best-epoch parameters")
    persist.check_shapes(folder, hmm.config.shapes())
    return persist.read_tensors(folder, hmm.config.shapes(), hmm.device)


def latest_folder(out: Path) -> Path:
    """The checkpoint folder that ``out/checkpoints/latest`` names (checked)."""
    latest = out / "checkpoints" / "latest"
    if not latest.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {latest} does not exist")
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{latest} is unreadable: {exc}") from exc
    if not re.fullmatch(r"step-[0-9]+", name):  # never a path out of the checkpoints folder
        raise CheckpointError(f"{latest} names {name[:80]!r}, not a checkpoint folder "
                              "step-NNNNNNNN of this run")
    folder = out / "checkpoints" / name
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"checkpoint {folder} has no {STATE_FILE}")
    return folder
