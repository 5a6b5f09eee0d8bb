"""Saving and loading models (hmmlvd.hmm.checkpoint, hmmlvd.core.atomic) and parameter checks on
construction."""

from __future__ import annotations

import hashlib
import json
import math
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from hmmlvd.core.atomic import atomic_write, atomic_write_json
from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.data import Vocabulary
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM
from hmmlvd.hmm.checkpoint import read_config, read_hmm

H, V, T = 3, 5, 4


@pytest.fixture
def saved(tmp_path, make_hmm):
    """A saved non-homogeneous model with a vocabulary: (folder, model)."""
    hmm = make_hmm(H, V, T, seed=81)
    hmm.vocab = Vocabulary(["the", "cat", "<eos>", "sat", "<unk>"])
    folder = tmp_path / "model"
    hmm.save_pretrained(folder)
    return folder, hmm


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("with_vocab", [False, True])
def test_round_trip(tmp_path, make_hmm, homogeneous, with_vocab):
    hmm = make_hmm(H, V, T, homogeneous, seed=82)
    if with_vocab:
        hmm.vocab = Vocabulary([f"w{i}" for i in range(V)])
    folder = tmp_path / "a" / "b"  # parents are created
    hmm.save_pretrained(folder)
    loaded = HMM.from_pretrained(folder)
    assert loaded.config == hmm.config
    for name, value in hmm.parameters().items():
        assert torch.equal(loaded.parameters()[name], value), name
        assert loaded.parameters()[name].dtype == torch.float32
    assert loaded.vocab == hmm.vocab
    assert (loaded.vocab is None) == (not with_vocab)
    x = torch.tensor([[0, 1, 2, 3]])
    assert torch.equal(loaded.log_likelihood(x), hmm.log_likelihood(x))


def test_saving_twice_overwrites_and_leaves_no_temporary_files(saved, make_hmm):
    folder, _ = saved
    other = make_hmm(H, V, T, seed=83)
    other.save_pretrained(folder)
    assert torch.equal(HMM.from_pretrained(folder).emission, other.emission)
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert {"model.safetensors", "config.json", "vocab.txt"} <= set(names)


def test_config_records_format_version_and_sizes(saved):
    folder, _ = saved
    raw = json.loads((folder / "config.json").read_text())
    assert raw["format_version"] == 1
    assert (raw["num_states"], raw["vocab_size"], raw["length"], raw["homogeneous"]) == \
        (H, V, T, False)


def refusal(folder) -> str:
    """The one-line CheckpointError of loading ``folder`` as an HMM."""
    with pytest.raises(CheckpointError) as info:
        HMM.from_pretrained(folder)
    return str(info.value)

def test_missing_folder(tmp_path):
    assert refusal(tmp_path / "nowhere") == f"model folder {tmp_path / 'nowhere'} does not exist"


def test_missing_config(saved):
    folder, _ = saved
    (folder / "config.json").unlink()
    assert refusal(folder) == (f"{folder / 'config.json'} is missing: {folder} is not a saved "
                               "hmmlvd model")


def test_a_model_saved_before_model_type_was_recorded_loads_as_an_hmm(saved):
    folder, hmm = saved
    raw = json.loads((folder / "config.json").read_text())
    del raw["model_type"]
    (folder / "config.json").write_text(json.dumps(raw))
    assert torch.equal(HMM.from_pretrained(folder).emission, hmm.emission)
    raw["model_type"] = "circuit"
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"holds a 'circuit', not a 'hmm'"):
        HMM.from_pretrained(folder)


def test_missing_tensors(saved):
    folder, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        HMM.from_pretrained(folder)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.05, 0.5, 0.99])
def test_truncated_tensors_file(saved, keep_fraction):
    folder, _ = saved
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(CheckpointError):
        HMM.from_pretrained(folder)


@pytest.mark.parametrize("field", ["num_states", "vocab_size", "length", "homogeneous"])
def test_config_that_does_not_match_tensors(saved, field):
    folder, _ = saved
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw[field] = (not raw[field]) if field == "homogeneous" else raw[field] + 1
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError):
        HMM.from_pretrained(folder)


def test_extra_tensor(saved):
    folder, _ = saved
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["extra"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="extra"):
        HMM.from_pretrained(folder)


def test_missing_tensor(saved):
    folder, _ = saved
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["transition"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="transition"):
        HMM.from_pretrained(folder)


def test_wrongly_shaped_tensor(saved):
    """config.json unchanged, one tensor of another shape: refused from the file header, before
    any tensor is read."""
    folder, _ = saved
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["emission"] = tensors["emission"][:, :-1].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"emission has shape \(4, 4, 3\) but config"):
        HMM.from_pretrained(folder)


class _Payload:
    """Unpickling this writes a marker file: proof that something ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "unpickled!"))


def test_pickle_is_never_loaded(saved, tmp_path, monkeypatch):
    """A pickle in place of model.safetensors is refused as unreadable without being run; pickle
    files beside a valid model are ignored; and loading a model and a training checkpoint never
    calls pickle or torch.load at all."""
    import pickle

    from conftest import save_hmm_checkpoint

    from hmmlvd.em import Progress
    from hmmlvd.hmm.resume import load_checkpoint

    folder, hmm = saved
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(marker))
    for name in ("pytorch_model.bin", "model.pt", "model.pkl"):
        (folder / name).write_bytes(payload)
    out = tmp_path / "run"
    save_hmm_checkpoint(hmm, EMConfig(batch_size=2), Progress(step=1), out)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    loaded = HMM.from_pretrained(folder)
    assert torch.equal(loaded.emission, hmm.emission)
    assert torch.equal(load_checkpoint(out)[0].transition, hmm.transition)
    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="unreadable"):
        HMM.from_pretrained(folder)
    assert not marker.exists()


BAD_CONFIGS = {
    "future version": "format_version 99",
    "no version": "format_version None",
    "not json": "not valid JSON",
    "not an object": r"config\.json",
    "missing size": "incomplete or invalid",
    "zero states": "incomplete or invalid",
}


@pytest.mark.parametrize("edit", list(BAD_CONFIGS))
def test_bad_config(saved, edit):
    folder, _ = saved
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    text = None
    if edit == "future version":
        raw["format_version"] = 99
    elif edit == "no version":
        del raw["format_version"]
    elif edit == "not json":
        text = "{not json"
    elif edit == "not an object":
        text = json.dumps([1, 2, 3])
    elif edit == "missing size":
        del raw["vocab_size"]
    elif edit == "zero states":
        raw["num_states"] = 0
    path.write_text(text if text is not None else json.dumps(raw))
    with pytest.raises(CheckpointError, match=BAD_CONFIGS[edit]):
        HMM.from_pretrained(folder)


def test_vocabulary_of_the_wrong_size(saved):
    folder, _ = saved
    (folder / "vocab.txt").write_text("a\nb\n")
    assert refusal(folder) == f"{folder}: vocabulary has 2 words but the model has vocab_size=5"
    (folder / "vocab.txt").write_text("")  # unreadable as a vocabulary: named with the folder
    message = refusal(folder)
    assert message.startswith(f"{folder}: ") and "empty" in message


@pytest.mark.parametrize("corruption", ["nan", "negative", "not normalised"])
def test_saved_invalid_parameters_are_rejected(saved, corruption):
    folder, _ = saved
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    if corruption == "nan":
        tensors["emission"][1, 2, 0] = math.nan
    elif corruption == "negative":
        tensors["transition"][0, 1] = torch.tensor([1.5, -0.5, 0.0])
    else:
        tensors["initial"] = tensors["initial"] * 2
    save_file(tensors, str(path))
    assert refusal(folder).startswith(f"{folder}: ")  # the folder, then what is wrong


@pytest.mark.parametrize(("corruption", "message"), [
    ("nan", r"^initial contains NaN or infinite values$"),
    ("inf", r"^emission contains NaN or infinite values$"),
    ("negative", r"^transition contains negative probabilities$"),
    ("not normalised", r"^emission distributions do not sum to 1 \(largest error"),
    ("initial not normalised", r"^initial distributions do not sum to 1 \(largest error"),
    ("transition not normalised", r"^transition distributions do not sum to 1 \(largest "),
    ("wrong shape", rf"^transition has shape \(1, {H}, {H}\), expected \({T - 1}, {H}, {H}\)"),
    ("partial", r"^pass all of initial, transition and emission, or none$"),
    ("nan, T = 1", r"^emission contains NaN or infinite values$")])
def test_invalid_parameters_on_construction(make_hmm, corruption, message):
    """Each kind of invalid parameter is refused naming the tensor and what is wrong, also in a
    one-token model, whose transition table is empty."""
    length = 1 if corruption.endswith("T = 1") else T
    good = make_hmm(H, V, length, seed=84)
    initial, transition, emission = (p.clone() for p in good.parameters().values())
    kwargs = {"initial": initial, "transition": transition, "emission": emission}
    if corruption.startswith("nan, "):
        emission[0, 1, 2] = math.nan
    elif corruption == "nan":
        initial[0] = math.nan
    elif corruption == "inf":
        emission[0, 0, 0] = math.inf
    elif corruption == "negative":
        # still sums to 1, so only the sign check can catch it
        transition[1, 0] = torch.tensor([1.2, -0.1, -0.1])
    elif corruption == "not normalised":
        emission[2, :, 1] *= 1.5
    elif corruption == "initial not normalised":
        initial *= 0.5
    elif corruption == "transition not normalised":
        transition[2, 1] *= 2
    elif corruption == "wrong shape":
        kwargs["transition"] = transition[:1]
    else:
        del kwargs["emission"]
    with pytest.raises(ParameterError, match=message):
        HMM(H, V, length, **kwargs)


def test_vocabulary_size_must_match_model(make_hmm):
    with pytest.raises(DataError, match="vocabulary"):
        HMM(H, V, T, vocab=Vocabulary(["a", "b"]))


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"a": 1})

    def failing(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_read_config_gives_the_sizes_from_config_json_alone(saved):
    """read_config (what `hmmlvd train --init` reads first) needs no tensors and names the
    file when a size is missing."""
    folder, hmm = saved
    (folder / "model.safetensors").unlink()
    assert read_config(folder) == hmm.config
    raw = json.loads((folder / "config.json").read_text())
    del raw["length"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as info:
        read_config(folder)
    assert str(info.value).startswith(f"{folder / 'config.json'} is incomplete or invalid: ")
    assert "length" in str(info.value)


def test_a_missing_or_reordered_vocabulary_is_refused_naming_the_file(saved):
    """config.json records the sha256 of vocab.txt's bytes: a model whose vocab.txt is gone,
    or whose words were reordered (every id would mean another word), is refused, the message
    naming the file, both digests and the fix."""
    folder, _ = saved
    vocab, config = folder / "vocab.txt", folder / "config.json"
    recorded = json.loads(config.read_text())["vocab_sha256"]
    assert recorded == "sha256:" + hashlib.sha256(vocab.read_bytes()).hexdigest()
    words = vocab.read_text().splitlines()
    vocab.write_text("\n".join([words[1], words[0], *words[2:]]) + "\n")
    found = "sha256:" + hashlib.sha256(vocab.read_bytes()).hexdigest()
    assert refusal(folder) == (
        f"{vocab} does not match the vocabulary this model was saved with (config.json records "
        f"{recorded[:19]}…, the file has {found[:19]}…): its words or their order changed; "
        "restore the vocab.txt saved with the model")
    vocab.unlink()
    assert refusal(folder) == (f"{vocab} is missing, but {config} records a vocabulary: "
                               "restore the vocab.txt saved with the model")


def test_read_hmm_reads_sizes_tensors_vocabulary_and_config_onto_the_cpu(saved):
    folder, hmm = saved
    config, tensors, vocab, raw = read_hmm(folder)
    assert config == hmm.config and vocab == hmm.vocab
    assert raw == json.loads((folder / "config.json").read_text())
    for name, value in hmm.parameters().items():
        assert tensors[name].device.type == "cpu"
        assert torch.equal(tensors[name], value), name
    del raw["num_states"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as info:
        read_hmm(folder)
    assert str(info.value).startswith(f"{folder / 'config.json'} is incomplete or invalid: ")
