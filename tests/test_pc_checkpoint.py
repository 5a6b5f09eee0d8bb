"""Saving and loading circuits (Circuit.save_pretrained / from_pretrained, in the format of
hmmlvd.core.persist): round trips for every input and product kind, folders saved by the previous
code still load, and every damaged folder raises CheckpointError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hmmlvd.core.atomic import atomic_write_json
from hmmlvd.core.errors import CheckpointError, ParameterError
from hmmlvd.core.persist import CONFIG_FILE, TENSORS_FILE
from hmmlvd.pc import (
    Circuit,
    chow_liu_tree,
    hclt_region_graph,
    load_circuit,
    poon_domingos,
    random_binary_trees,
    save_circuit,
)
from hmmlvd.pc.structures import RegionGraph


def _hclt_graph():
    data = np.random.default_rng(0).integers(0, 3, size=(40, 5))
    return hclt_region_graph(chow_liu_tree(data, 3), num_variables=5)


CASES = [
    (lambda: poon_domingos(2, 3, delta=1), "einsum", "categorical"),
    (lambda: random_binary_trees(6, 2, 2, seed=1), "einsum", "gaussian"),
    (_hclt_graph, "hadamard", "bernoulli"),
]


def _data(circuit: Circuit, n: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    if circuit.input_kind == "gaussian":
        return torch.rand(n, circuit.num_variables, generator=gen)
    return torch.randint(0, circuit.num_categories, (n, circuit.num_variables), generator=gen)


@pytest.mark.parametrize(("graph", "product", "kind"), CASES)
def test_round_trip_gives_the_same_circuit(tmp_path, graph, product, kind):
    circuit = Circuit(graph(), 3, input=kind, num_categories=3, product=product, root_size=2,
                      seed=9)
    save_circuit(circuit, tmp_path / "c")
    loaded = load_circuit(tmp_path / "c")
    assert loaded.graph == circuit.graph
    assert loaded.config == circuit.config
    x = _data(circuit)
    assert torch.equal(loaded.log_likelihood(x), circuit.log_likelihood(x))


def test_graph_dict_round_trip():
    graph = poon_domingos(3, 3, delta=1)
    assert RegionGraph.from_dict(json.loads(json.dumps(graph.to_dict()))) == graph


def save_as_before(circuit: Circuit, folder) -> None:
    """``circuit`` saved as hmmlvd.pc.checkpoint wrote it before hmmlvd.core.persist, spelled out
    (the files on disk must not change)."""
    folder.mkdir()
    save_file({name: p.detach().contiguous() for name, p in circuit.named_parameters()},
              str(folder / "model.safetensors"))
    graph = circuit.graph
    atomic_write_json(folder / "config.json", {
        "format_version": 1, "model_type": "circuit", "settings": circuit.config.to_dict(),
        "graph": {"num_variables": graph.num_variables,
                  "regions": [list(r) for r in graph.regions],
                  "partitions": [[list(p.parent), [list(c) for c in p.children]]
                                 for p in graph.partitions]}})


@pytest.mark.parametrize(("graph", "product", "kind"), CASES)
def test_files_are_those_of_earlier_versions(tmp_path, graph, product, kind):
    circuit = Circuit(graph(), 2, input=kind, num_categories=3, product=product, seed=4)
    save_as_before(circuit, tmp_path / "old")
    circuit.save_pretrained(tmp_path / "new")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()
    loaded = load_circuit(tmp_path / "old")
    assert loaded.graph == circuit.graph and loaded.config == circuit.config
    x = _data(circuit)
    assert torch.equal(loaded.log_likelihood(x), circuit.log_likelihood(x))


@pytest.mark.parametrize(("graph", "message"), [
    ([], "must be a JSON object"),
    ({"num_variables": 2, "regions": [[0, 1]]}, r"needs the keys \['partitions'\]"),
    ({"num_variables": 2, "regions": {}, "partitions": []}, "regions must be a list"),
    ({"num_variables": 2, "regions": [[0, 1], [0], [1]], "partitions": [[[0, 1], [0], [1]]]},
     r"must be \[parent, \[children\]\], got 3"),
    ({"num_variables": 2, "regions": [[0, 1], [0], ["1"]], "partitions": []},
     "a region's variable must be an integer"),
    ({"num_variables": 2, "regions": [[0, 1], [0], [1.0]], "partitions": []},
     "a region's variable must be an integer"),
    ({"num_variables": 2, "regions": [[0, 1], [0], [1]], "partitions": [[[0, 1], 0]]},
     "a partition's children must be a list"),
    ({"num_variables": 2, "regions": [[0, 1], [0], [1]], "partitions": []},
     "not reachable from the root"),
])
def test_malformed_graph_dicts_are_named(graph, message):
    with pytest.raises(ParameterError, match=message):
        RegionGraph.from_dict(graph)


@pytest.fixture
def saved(tmp_path):
    circuit = Circuit(poon_domingos(2, 2, delta=1), 2, num_categories=4, seed=3)
    save_circuit(circuit, tmp_path / "c")
    return tmp_path / "c"


def test_missing_folder_or_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="missing"):
        load_circuit(tmp_path / "nowhere")
    (saved / TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_circuit(saved)


def _edit_config(folder, change):
    path = folder / CONFIG_FILE
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("change", [
    lambda raw: raw.update(format_version=99),
    lambda raw: raw.update(model_type="hmm"),
    lambda raw: raw.pop("graph"),
    lambda raw: raw["settings"].update(num_units=0),
    lambda raw: raw["graph"]["partitions"].pop(),
])
def test_bad_config(saved, change):
    _edit_config(saved, change)
    with pytest.raises(CheckpointError):
        load_circuit(saved)


def test_config_not_json(saved):
    (saved / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_circuit(saved)


def test_truncated_tensors(saved):
    path = saved / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_circuit(saved)


@pytest.mark.parametrize("damage", ["extra", "missing", "shape", "nan"])
def test_wrong_tensors(saved, damage):
    path = saved / TENSORS_FILE
    tensors = load_file(str(path))
    name = "root_sum.log_weight"
    if damage == "extra":
        tensors["surplus"] = torch.zeros(1)
    elif damage == "missing":
        del tensors[name]
    elif damage == "shape":
        tensors[name] = torch.zeros(3, 3)
    else:
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError):
        load_circuit(saved)
