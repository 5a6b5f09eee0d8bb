"""Load whichever model a saved folder holds: a :class:`~hmmlvd.pc.circuit.Circuit` (the
baselines HCLT, PD, RAT-SPN) or a :class:`~hmmlvd.image.patch_circuit.PatchCircuit` (image
LVD), as its ``config.json`` names it (:mod:`hmmlvd.core.persist`)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from hmmlvd.core import persist
from hmmlvd.image.patch_circuit import MODEL_TYPE as PATCH_CIRCUIT
from hmmlvd.image.patch_circuit import PatchCircuit
from hmmlvd.pc.circuit import MODEL_TYPE as CIRCUIT
from hmmlvd.pc.circuit import Circuit

#: ``model_type`` -> loader(directory, device) of every model an image folder may hold.
LOADERS: dict[str, Callable[..., Circuit | PatchCircuit]] = {
    CIRCUIT: Circuit.from_pretrained,
    PATCH_CIRCUIT: PatchCircuit.from_pretrained,
}


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> Circuit | PatchCircuit:
    """The circuit or patch circuit saved in ``directory`` (by ``save_pretrained``), whichever
    its config names, on ``device``; :class:`~hmmlvd.core.errors.CheckpointError` naming the file
    for a folder that holds neither, or a damaged one."""
    kind = persist.saved_type(directory, LOADERS, "image model")
    return LOADERS[kind](directory, device)
