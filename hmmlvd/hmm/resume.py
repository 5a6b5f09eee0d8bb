"""Resuming HMM training: the model, EM config and checkpoints (progress, early stopping, run
id) of the newest checkpoint under an output folder, in the run-folder format of
:mod:`hmmlvd.em.checkpoints` (or the HMM's earlier ``step-NNNNNNNN/train_state.json``)."""

from __future__ import annotations

from pathlib import Path

from hmmlvd.core.errors import CheckpointError
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm.checkpoint import MODEL_TYPE
from hmmlvd.hmm.model import HMM
from hmmlvd.hmm.train import IMPLIED


def load_checkpoint(out: str | Path, device: str = "cpu", trained_on: dict | None = None
                    ) -> tuple[HMM, EMConfig, EMCheckpoints]:
    """The model, EM config and resumed :class:`~hmmlvd.em.checkpoints.EMCheckpoints` of the
    newest checkpoint under ``out``; pass the checkpoints to :func:`hmmlvd.hmm.train.train`
    to continue. ``trained_on``: this run's record of its data and settings
    (:mod:`hmmlvd.core.provenance`), refused if it differs from the checkpoint's (None: not
    checked). :class:`CheckpointError` when there is no checkpoint, it is damaged, or it holds
    no HMM."""
    checkpoints = EMCheckpoints(out, trained_on=trained_on)
    folder = checkpoints.resume()
    kind = checkpoints.saved.kind
    if kind != MODEL_TYPE:
        raise CheckpointError(f"checkpoint {folder} holds a {kind!r}, not an HMM: resume it "
                              "with the command that made it")
    config = checkpoints.saved_config(IMPLIED)
    if config is None:
        raise CheckpointError(f"checkpoint {folder} records no EM config")
    return HMM.from_pretrained(folder, device=device), config, checkpoints
