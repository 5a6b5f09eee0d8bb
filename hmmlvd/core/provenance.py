"""What a model was trained on, as digests and settings: the vocabulary digest that
``config.json`` records (checked on loading), and the record of a training run (data digest,
window selection, model shape, command; for image runs the images' digest) that checkpoints
keep and ``--resume`` compares."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hmmlvd.core.errors import CheckpointError

#: The settings of a training record in the order ``--resume`` checks them, with their flags.
FLAGS = {"length": "--length", "hidden_states": "--hidden-states",
         "homogeneous": "--homogeneous", "max_windows": "--max-windows", "seed": "--seed"}


def vocab_digest(tokens: Sequence[str]) -> str:
    """``sha256:<hex>`` of the words in order, one per line (the bytes of ``vocab.txt``)."""
    text = "".join(tok + "\n" for tok in tokens)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_digest(stream: np.ndarray) -> str:
    """``sha256:<hex>`` of a token-id stream (as little-endian int32)."""
    data = np.ascontiguousarray(np.asarray(stream), dtype="<i4")
    return "sha256:" + hashlib.sha256(data.tobytes()).hexdigest()


def image_digest(images: np.ndarray) -> str:
    """``sha256:<hex>`` of images [N, H, W, C] of grey levels: their shape, then their values
    (as uint8, row-major), so that the same bytes in another shape differ."""
    data = np.ascontiguousarray(np.asarray(images), dtype=np.uint8)
    digest = hashlib.sha256(repr(tuple(data.shape)).encode("ascii"))
    digest.update(data.reshape(-1))  # a flat view of the contiguous array: no copy
    return "sha256:" + digest.hexdigest()


def image_training_record(command: str, train_images: np.ndarray) -> dict:
    """What an image run trains on, in the form :func:`check_same_training` compares: the
    command and the training images' digest and number (the model and EM settings are kept
    and compared by :class:`hmmlvd.em.checkpoints.EMCheckpoints`)."""
    return {"command": command, "data_sha256": image_digest(train_images),
            "train_images": len(train_images)}


def training_record(command: str, train_stream: np.ndarray, num_windows: int,
                    max_windows: int | None, seed: int, hidden_states: int, length: int,
                    homogeneous: bool) -> dict:
    """What a run trains on: the command, the training tokens' digest, the window selection
    (``max_windows``, ``seed`` and the resulting number of windows) and the model shape."""
    return {"command": command, "data_sha256": token_digest(train_stream),
            "train_tokens": len(train_stream), "num_windows": int(num_windows),
            "max_windows": max_windows, "seed": seed, "hidden_states": hidden_states,
            "length": length, "homogeneous": bool(homogeneous)}


def _data_words(record: dict) -> str:
    """The training data of a record in words: ``5,000 train images sha256:0123456789ab…``
    (or train tokens; the count where the record has it)."""
    digest = f"{record['data_sha256'][:19]}…"
    for key, noun in (("train_tokens", "train tokens"), ("train_images", "train images")):
        if isinstance(record.get(key), int):
            return f"{record[key]:,} {noun} {digest}"
    return f"train data {digest}"


def _flag(flag: str, value: object) -> str:
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"no {flag}" if value is None else f"{flag} {value}"


def check_same_training(saved: dict, given: dict, out: Path) -> None:
    """:class:`CheckpointError` naming the first setting in which ``given`` (this command line)
    differs from ``saved`` (the checkpoint's record). Keys the checkpoint lacks (written by an
    older hmmlvd) are not checked."""
    where = f"the checkpoint in {out}"
    if "command" in saved and saved["command"] != given["command"]:
        raise CheckpointError(f"{where} was made by `hmmlvd {saved['command']}`, not "
                              f"`hmmlvd {given['command']}`: resume it with `hmmlvd "
                              f"{saved['command']} ... --resume`, or start a new run in "
                              "another --out")
    if "data_sha256" in saved and saved["data_sha256"] != given["data_sha256"]:
        raise CheckpointError(
            f"the training data differs from what {where} was trained on "
            f"({_data_words(saved)} then, {_data_words(given)} now): resume with the data "
            "folder the run was started with")
    for key, flag in FLAGS.items():
        if key in saved and saved[key] != given[key]:
            raise CheckpointError(f"--resume with {_flag(flag, given[key])}, but {where} was "
                                  f"trained with {_flag(flag, saved[key])}: resume with the "
                                  "settings the run was started with, or start a new run in "
                                  "another --out")
    if "num_windows" in saved and saved["num_windows"] != given["num_windows"]:
        raise CheckpointError(f"--resume selects {given['num_windows']:,} training windows, "
                              f"but {where} was trained on {saved['num_windows']:,}: resume "
                              "with the settings the run was started with")


def setting_differences(saved: dict, given: dict) -> str:
    """``name <saved> then, <given> now`` for every key whose value differs (``; ``-joined)."""
    keys = [k for k in {**saved, **given} if saved.get(k) != given.get(k)]
    return "; ".join(f"{k} {saved.get(k)!r} then, {given.get(k)!r} now" for k in keys)
