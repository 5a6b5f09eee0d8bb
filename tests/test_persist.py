"""The one on-disk format (hmmlvd.core.persist): round trips, the config written last, cache entries
that keep the first writer's folder, cache keys, and every damaged folder a one-line
CheckpointError naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hmmlvd.core import persist
from hmmlvd.core.errors import CheckpointError, ParameterError

SHAPES = {"a": (2, 3), "b": (4,)}


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}


@pytest.fixture
def saved(tmp_path) -> Path:
    return persist.save(tmp_path / "m", tensors(), {"settings": {"k": 3}}, "thing")


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    """The error's message, checked to be one line naming ``path``."""
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    return message


# ----- round trips ----------------------------------------------------------------------------
def test_round_trip_of_tensors_and_config(saved):
    assert sorted(p.name for p in saved.iterdir()) == [persist.CONFIG_FILE,
                                                       persist.TENSORS_FILE]
    raw = json.loads((saved / persist.CONFIG_FILE).read_text())
    assert list(raw) == ["format_version", "model_type", "settings"]  # the order on disk
    assert persist.read_config(saved, "thing") == {
        "format_version": persist.FORMAT_VERSION, "model_type": "thing", "settings": {"k": 3}}
    assert persist.saved_type(saved, {"thing", "other"}) == "thing"
    assert persist.tensor_shapes(saved) == SHAPES
    loaded = persist.read_tensors(saved, SHAPES)
    assert loaded.keys() == SHAPES.keys()
    for name, tensor in tensors().items():
        assert torch.equal(loaded[name], tensor)


def test_load_into_copies_the_parameters(tmp_path):
    source = nn.Linear(3, 2)
    persist.save(tmp_path / "lin", dict(source.named_parameters()), {}, "linear")
    target = nn.Linear(3, 2)
    persist.load_into(target, tmp_path / "lin")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    with pytest.raises(CheckpointError, match="weight has shape") as exc:
        persist.load_into(nn.Linear(4, 2), tmp_path / "lin")
    one_line(exc, tmp_path / "lin" / persist.TENSORS_FILE)


def test_untyped_configs_only_when_asked_for(saved):
    path = saved / persist.CONFIG_FILE
    path.write_text(json.dumps({"format_version": 1, "settings": {}}))
    assert persist.read_config(saved, "thing", untyped="thing")["settings"] == {}
    with pytest.raises(CheckpointError, match="holds a None, not a 'thing'"):
        persist.read_config(saved, "thing")


# ----- damaged configs ------------------------------------------------------------------------
def test_missing_folder_or_config(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        persist.read_config(tmp_path / "nowhere", "thing", "widget")
    assert "widget folder" in one_line(exc, tmp_path / "nowhere")
    (saved / persist.CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"is missing: .* not a saved hmmlvd widget") as exc:
        persist.read_config(saved, "thing", "widget")
    one_line(exc, saved / persist.CONFIG_FILE)


def test_config_larger_than_the_cap_is_not_read(saved, monkeypatch):
    monkeypatch.setattr(persist, "MAX_CONFIG_BYTES", 20)
    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("the config was read"))
        with pytest.raises(CheckpointError, match="larger than the 20 a config may") as exc:
            persist.read_config(saved, "thing")
    one_line(exc, saved / persist.CONFIG_FILE)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[1, 2]", "must hold a JSON object, got list"),
    ('"config"', "must hold a JSON object, got str"),
    ('{"model_type": "thing"}', "format_version None"),
    ('{"format_version": 2, "model_type": "thing"}', r"format_version 2; .*\(upgrade hmmlvd\)"),
    ('{"format_version": 0, "model_type": "thing"}', "format_version 0"),
    ('{"format_version": true, "model_type": "thing"}', "format_version True"),
    ('{"format_version": 1.0, "model_type": "thing"}', "format_version 1.0"),
    ('{"format_version": 1, "model_type": "hmm"}', "holds a 'hmm', not a 'thing'"),
    ('{"format_version": 1, "model_type": ["thing"]}', r"holds a \['thing'\]"),
])
def test_bad_config(saved, text, message):
    path = saved / persist.CONFIG_FILE
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as exc:
        persist.read_config(saved, "thing")
    one_line(exc, path)


# ----- damaged tensor files -------------------------------------------------------------------
def test_missing_tensor_file(saved):
    (saved / persist.TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="is missing") as exc:
        persist.read_tensors(saved, SHAPES)
    one_line(exc, saved / persist.TENSORS_FILE)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update(surplus=torch.zeros(1)), r"holds tensors \['a', 'b', 'surplus'\]"),
    (lambda t: t.pop("b"), r"holds tensors \['a'\], expected \['a', 'b'\]"),
    (lambda t: t.update(a=torch.zeros(3, 2)), r"a has shape \(3, 2\) but config.json implies "
                                              r"\(2, 3\)"),
])
def test_tensor_file_that_does_not_match(saved, change, message):
    path = saved / persist.TENSORS_FILE
    changed = tensors()
    change(changed)
    save_file(changed, str(path))
    with pytest.raises(CheckpointError, match=message) as exc:
        persist.read_tensors(saved, SHAPES)
    one_line(exc, path)
    with pytest.raises(CheckpointError, match=message):
        persist.check_shapes(saved, SHAPES)


@pytest.mark.parametrize("keep", [-20, 5, 0])
def test_truncated_tensor_file(saved, keep):
    path = saved / persist.TENSORS_FILE
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as exc:
        persist.read_tensors(saved, SHAPES)
    one_line(exc, path)


def test_tensor_file_changed_while_read(saved, monkeypatch):
    monkeypatch.setattr(persist, "load_file", lambda *a, **k: {"a": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="changed while it was being read") as exc:
        persist.read_tensors(saved, SHAPES)
    one_line(exc, saved / persist.TENSORS_FILE)


# ----- writing --------------------------------------------------------------------------------
def test_save_writes_the_config_last(tmp_path, monkeypatch):
    seen = []

    def extra(folder: Path) -> None:
        seen.append(sorted(p.name for p in folder.iterdir()))
        (folder / "vocab.txt").write_text("a\n")

    def fail(path, data):
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        raise OSError("disk full")

    monkeypatch.setattr(persist, "atomic_write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        persist.save(tmp_path / "m", tensors(), {}, "thing", extra=extra)
    assert seen == [[persist.TENSORS_FILE], [persist.TENSORS_FILE, "vocab.txt"]]
    assert not (tmp_path / "m").exists()  # the folder this save created is removed again
    (tmp_path / "old").mkdir()  # a folder that was there is kept, without a config
    with pytest.raises(OSError, match="disk full"):
        persist.save(tmp_path / "old", tensors(), {}, "thing", extra=extra)
    assert not (tmp_path / "old" / persist.CONFIG_FILE).exists()
    assert persist.tensor_shapes(tmp_path / "old") == SHAPES
    with pytest.raises(CheckpointError, match="is missing"):  # so it does not pass as saved
        persist.read_config(tmp_path / "old", "thing")


def test_save_onto_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        persist.save(tmp_path / "f", tensors(), {}, "thing")


def test_save_once_keeps_the_first_writers_folder(tmp_path):
    folder = tmp_path / "cache" / "entry"
    persist.save_once(folder, tensors(), {"writer": 1}, "thing")
    assert persist.read_config(folder, "thing")["writer"] == 1
    persist.save_once(folder, {"a": torch.zeros(SHAPES["a"])}, {"writer": 2}, "thing")
    assert persist.read_config(folder, "thing")["writer"] == 1
    assert persist.tensor_shapes(folder) == SHAPES
    assert [p.name for p in folder.parent.iterdir()] == ["entry"]  # no temporary left


def test_save_once_reports_a_failure_that_leaves_no_folder(tmp_path, monkeypatch):
    def fail(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(persist.os, "rename", fail)
    with pytest.raises(PermissionError):
        persist.save_once(tmp_path / "entry", tensors(), {}, "thing")
    assert list(tmp_path.iterdir()) == []


# ----- load_model -----------------------------------------------------------------------------
def build_linear(raw: dict) -> nn.Linear:
    """nn.Linear(settings.inputs, 2), its setting checked as hmmlvd's configs check theirs."""
    inputs = raw["settings"]["inputs"]
    if isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 1:
        raise ParameterError(f"inputs must be a positive integer, got {inputs!r}")
    return nn.Linear(inputs, 2)


def test_load_model_builds_fills_and_checks(tmp_path):
    source = nn.Linear(3, 2)
    persist.save(tmp_path / "m", dict(source.named_parameters()), {"settings": {"inputs": 3}},
                 "linear")
    loaded = persist.load_model(tmp_path / "m", "linear", build_linear)
    assert torch.equal(loaded.weight, source.weight)

    def refuse(model: nn.Module) -> None:
        raise ParameterError("weight contains NaN")

    with pytest.raises(CheckpointError, match="weight contains NaN") as exc:
        persist.load_model(tmp_path / "m", "linear", build_linear, refuse)
    one_line(exc, tmp_path / "m" / persist.TENSORS_FILE)


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "is invalid: it lacks the key 'inputs'"),
    ({"inputs": "3"}, "is invalid: inputs must be a positive integer, got '3'"),
    ({"inputs": -1}, "is invalid: inputs must be a positive integer, got -1"),
    ([3], "is invalid: list indices must be integers"),
])
def test_load_model_with_an_invalid_config(tmp_path, settings, message):
    persist.save(tmp_path / "m", {}, {"settings": settings}, "linear")
    with pytest.raises(CheckpointError, match=message) as exc:
        persist.load_model(tmp_path / "m", "linear", build_linear)
    one_line(exc, tmp_path / "m" / persist.CONFIG_FILE)


# ----- cache keys -----------------------------------------------------------------------------
INPUTS = [
    {"settings": {"patch": 4, "lr": 0.002}, "images": {"shape": [3, 8, 8, 1], "sha1": "ab"}},
    {"version": 2, "mode": "masked", "encoder": {"name": "x", "weights": "00"}, "starts": None},
    {"b": [1, 2, 3], "a": "é"},
]


@pytest.mark.parametrize("inputs", INPUTS)
def test_cache_key_is_the_sha256_of_sorted_json(inputs):
    expected = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    assert persist.cache_key(inputs) == expected
    assert len(expected) == 24 and int(expected, 16) >= 0
    assert persist.cache_key(dict(reversed(list(inputs.items())))) == expected


def changed_copies(value: object) -> list[object]:
    """Copies of the JSON ``value`` with one leaf changed (a number + 1, a string + "x",
    None -> 0), for every leaf."""
    if isinstance(value, dict):
        return [{**value, k: c} for k, v in value.items() for c in changed_copies(v)]
    if isinstance(value, list):
        return [[*value[:i], c, *value[i + 1:]] for i, v in enumerate(value)
                for c in changed_copies(v)]
    if isinstance(value, str):
        return [value + "x"]
    return [0] if value is None else [value + 1]


@pytest.mark.parametrize("inputs", INPUTS)
def test_cache_key_changes_with_any_value(inputs):
    keys = {persist.cache_key(c) for c in changed_copies(inputs)}
    assert persist.cache_key(inputs) not in keys
    assert len(keys) == len(changed_copies(inputs))
