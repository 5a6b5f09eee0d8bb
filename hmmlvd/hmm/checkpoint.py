"""Save and load HMMs: ``model.safetensors`` (initial, transition, emission), ``config.json``
(sizes and format version) and ``vocab.txt``. No pickle anywhere; every file is written
atomically, the config last, so a folder with a config always has complete tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from hmmlvd.atomic import atomic_write, atomic_write_json
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.errors import CheckpointError, DataError, ParameterError
from hmmlvd.hmm.model import HMM, HMMConfig
from hmmlvd.memory import check_model

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"


def save_hmm(hmm: HMM, directory: Path) -> None:
    """Write ``hmm`` into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in hmm.parameters().items()}
    atomic_write(directory / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
    if hmm.vocab is not None:
        hmm.vocab.save(directory / VOCAB_FILE)
    config = {"format_version": FORMAT_VERSION, "model_type": "hmm", **hmm.config.to_dict()}
    atomic_write_json(directory / CONFIG_FILE, config)


def read_config(directory: Path) -> HMMConfig:
    """The model sizes recorded in ``directory/config.json``."""
    if not directory.is_dir():
        raise CheckpointError(f"model folder {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved hmmlvd model")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this hmmlvd reads "
                              f"versions up to {FORMAT_VERSION} (upgrade hmmlvd)")
    try:
        return HMMConfig(raw["num_states"], raw["vocab_size"], raw["length"],
                         bool(raw["homogeneous"]))
    except (KeyError, ParameterError) as exc:
        raise CheckpointError(f"{path} is incomplete or invalid: {exc}") from exc


def load_hmm(directory: Path, device: str | torch.device = "cpu") -> HMM:
    """Load and check a model folder written by :func:`save_hmm`."""
    config = read_config(directory)
    path = directory / TENSORS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:  # names and shapes from the header alone: nothing is allocated yet
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not a dict (SIM118 does not apply)
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated: {exc}") from exc
    expected = config.shapes()
    if set(shapes) != set(expected):
        raise CheckpointError(f"{path} holds tensors {sorted(shapes)}, expected "
                              f"{sorted(expected)}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise CheckpointError(f"{path}: {name} has shape {shapes[name]} but config.json "
                                  f"implies {shape}")
    check_model(config, device, "load")  # before reading tensors that cannot fit
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated: {exc}") from exc
    if {k: tuple(v.shape) for k, v in tensors.items()} != shapes:  # changed since the header
        raise CheckpointError(f"{path} changed while it was being read")
    try:
        vocab = (Vocabulary.load(directory / VOCAB_FILE) if (directory / VOCAB_FILE).is_file()
                 else None)
        return HMM(config.num_states, config.vocab_size, config.length, config.homogeneous,
                   device=device, vocab=vocab, **tensors)
    except (ParameterError, DataError) as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
