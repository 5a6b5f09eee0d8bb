"""HMM folders in the one on-disk format of :mod:`hmmlvd.core.persist`: ``model.safetensors``
(``initial``, ``transition``, ``emission``), ``config.json`` (format version, ``model_type``
"hmm", the sizes of :class:`~hmmlvd.hmm.config.HMMConfig` and the vocabulary's digest) and, when
the model has one, ``vocab.txt``. :meth:`hmmlvd.HMM.save_pretrained` and
:meth:`~hmmlvd.HMM.from_pretrained` call these; this module never builds an HMM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.core.provenance import vocab_digest
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.memory import check_model

if TYPE_CHECKING:  # the HMM calls this module; no runtime import of it here
    from hmmlvd.hmm.model import HMM

MODEL_TYPE = "hmm"
VOCAB_FILE = "vocab.txt"


def save_hmm(hmm: HMM, directory: Path) -> None:
    """Write ``hmm`` into ``directory`` (created if needed; :class:`CheckpointError` if it is a
    file): tensors, then ``vocab.txt`` (if the model has a vocabulary), then the config."""
    config = hmm.config.to_dict()
    if hmm.vocab is not None:
        config["vocab_sha256"] = vocab_digest(hmm.vocab.tokens)
    vocab = hmm.vocab
    persist.save(directory, hmm.parameters(), config, MODEL_TYPE,
                 extra=None if vocab is None else lambda folder: vocab.save(folder / VOCAB_FILE))


def read_config(directory: Path) -> HMMConfig:
    """The model sizes recorded in ``directory/config.json``."""
    return _config_of(_read_raw_config(directory), Path(directory) / persist.CONFIG_FILE)


def _read_raw_config(directory: Path) -> dict:
    # folders written before model_type was recorded are HMMs
    return persist.read_config(directory, MODEL_TYPE, "model", untyped=MODEL_TYPE)


def _config_of(raw: dict, path: Path) -> HMMConfig:
    try:
        return HMMConfig(raw["num_states"], raw["vocab_size"], raw["length"],
                         bool(raw["homogeneous"]))
    except (KeyError, ParameterError) as exc:
        raise CheckpointError(f"{path} is incomplete or invalid: {exc}") from exc


def read_hmm(directory: Path, device: str | torch.device = "cpu"
             ) -> tuple[HMMConfig, dict[str, torch.Tensor], Vocabulary | None, dict]:
    """(sizes, tensors on ``device``, vocabulary or None, the raw config) of a model folder.
    The tensor file's header is checked against the config, and the model's memory against
    ``device``, before any tensor is read."""
    directory = Path(directory)
    raw = _read_raw_config(directory)
    config = _config_of(raw, directory / persist.CONFIG_FILE)
    persist.check_shapes(directory, config.shapes())
    check_model(config, device, "load")  # before reading tensors that cannot fit
    tensors = persist.read_tensors(directory, config.shapes(), device)
    try:
        vocab = (Vocabulary.load(directory / VOCAB_FILE) if (directory / VOCAB_FILE).is_file()
                 else None)
    except DataError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    return config, tensors, vocab, raw


def check_vocab_digest(recorded: object, vocab: Vocabulary | None, directory: Path) -> None:
    """:class:`CheckpointError` if ``config.json`` records a vocabulary digest that
    ``vocab.txt`` does not match (its words or their order changed), or vocab.txt is gone."""
    if recorded is None:
        return  # saved without a vocabulary, or before digests were recorded
    path = directory / VOCAB_FILE
    if vocab is None:
        raise CheckpointError(f"{path} is missing, but {directory / persist.CONFIG_FILE} "
                              "records a vocabulary: restore the vocab.txt saved with the model")
    found = vocab_digest(vocab.tokens)
    if found != recorded:
        raise CheckpointError(
            f"{path} does not match the vocabulary this model was saved with "
            f"({persist.CONFIG_FILE} records {str(recorded)[:19]}…, the file has "
            f"{found[:19]}…): its words or their order changed; restore the vocab.txt saved "
            "with the model")
