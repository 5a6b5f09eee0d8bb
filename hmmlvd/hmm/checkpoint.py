"""Save and load HMMs: ``model.safetensors`` (initial, transition, emission), ``config.json``
(sizes, format version and, with a vocabulary, its digest ``vocab_sha256``) and ``vocab.txt``.
No pickle anywhere; every file is written atomically, the config last, so a folder with a
config always has complete tensors. Loading refuses a ``vocab.txt`` whose words or order differ
from the digest (folders saved before the digest existed load unchecked)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from hmmlvd.atomic import atomic_write, atomic_write_json, make_folder
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.errors import CheckpointError, DataError, ParameterError
from hmmlvd.hmm.model import HMM, HMMConfig
from hmmlvd.memory import check_model
from hmmlvd.provenance import vocab_digest

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"


def save_hmm(hmm: HMM, directory: Path) -> None:
    """Write ``hmm`` into ``directory`` (created if needed; :class:`CheckpointError` if it is a
    file)."""
    make_folder(directory, "model folder")
    tensors = {k: v.detach().contiguous().cpu() for k, v in hmm.parameters().items()}
    atomic_write(directory / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
    config = {"format_version": FORMAT_VERSION, "model_type": "hmm", **hmm.config.to_dict()}
    if hmm.vocab is not None:
        hmm.vocab.save(directory / VOCAB_FILE)
        config["vocab_sha256"] = vocab_digest(hmm.vocab.tokens)
    atomic_write_json(directory / CONFIG_FILE, config)


def read_config(directory: Path) -> HMMConfig:
    """The model sizes recorded in ``directory/config.json``."""
    return _config_of(_read_raw_config(directory), directory / CONFIG_FILE)


def _read_raw_config(directory: Path) -> dict:
    """``directory/config.json`` as a dict of a supported format version."""
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
    return raw


def _config_of(raw: dict, path: Path) -> HMMConfig:
    try:
        return HMMConfig(raw["num_states"], raw["vocab_size"], raw["length"],
                         bool(raw["homogeneous"]))
    except (KeyError, ParameterError) as exc:
        raise CheckpointError(f"{path} is incomplete or invalid: {exc}") from exc


def load_hmm(directory: Path, device: str | torch.device = "cpu") -> HMM:
    """Load and check a model folder written by :func:`save_hmm`."""
    raw = _read_raw_config(directory)
    config = _config_of(raw, directory / CONFIG_FILE)
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
        hmm = HMM(config.num_states, config.vocab_size, config.length, config.homogeneous,
                  device=device, vocab=vocab, **tensors)
    except (ParameterError, DataError) as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    _check_vocab_digest(raw.get("vocab_sha256"), vocab, directory)
    return hmm


def _check_vocab_digest(recorded: object, vocab: Vocabulary | None, directory: Path) -> None:
    """:class:`CheckpointError` if ``config.json`` records a vocabulary digest that
    ``vocab.txt`` does not match (its words or their order changed), or vocab.txt is gone."""
    if recorded is None:
        return  # saved without a vocabulary, or before digests were recorded
    path = directory / VOCAB_FILE
    if vocab is None:
        raise CheckpointError(f"{path} is missing, but {directory / CONFIG_FILE} records a "
                              "vocabulary: restore the vocab.txt saved with the model")
    found = vocab_digest(vocab.tokens)
    if found != recorded:
        raise CheckpointError(
            f"{path} does not match the vocabulary this model was saved with ({CONFIG_FILE} "
            f"records {str(recorded)[:19]}…, the file has {found[:19]}…): its words or their "
            "order changed; restore the vocab.txt saved with the model")
