"""Save and load circuits: ``model.safetensors`` (every parameter tensor by name) and
``config.json`` (format version, the layer settings and the region graph as lists of
variable indices). No pickle; files are written atomically, the config last."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hmmlvd.atomic import atomic_write, atomic_write_json
from hmmlvd.errors import CheckpointError, HMMLVDError
from hmmlvd.pc.circuit import Circuit
from hmmlvd.pc.structures import Partition, RegionGraph

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def graph_to_dict(graph: RegionGraph) -> dict:
    """A region graph as JSON-ready lists."""
    return {"num_variables": graph.num_variables,
            "regions": [list(r) for r in graph.regions],
            "partitions": [[list(p.parent), [list(c) for c in p.children]]
                           for p in graph.partitions]}


def graph_from_dict(raw: dict) -> RegionGraph:
    """Inverse of ``graph_to_dict`` (validated)."""
    graph = RegionGraph(
        num_variables=int(raw["num_variables"]),
        regions=tuple(tuple(int(v) for v in r) for r in raw["regions"]),
        partitions=tuple(Partition(tuple(int(v) for v in parent),
                                   tuple(tuple(int(v) for v in c) for c in children))
                         for parent, children in raw["partitions"]))
    graph.validate()
    return graph


def save_circuit(circuit: Circuit, directory: str | Path) -> None:
    """Write ``circuit`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in circuit.named_parameters()}
    atomic_write(directory / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
    config = {"format_version": FORMAT_VERSION, "model_type": "circuit",
              "settings": circuit.settings, "graph": graph_to_dict(circuit.graph)}
    atomic_write_json(directory / CONFIG_FILE, config)


def load_circuit(directory: str | Path, device: str | torch.device = "cpu") -> Circuit:
    """Load and check a folder written by ``save_circuit``."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved hmmlvd circuit")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw["format_version"]
        if raw.get("model_type") != "circuit":
            raise CheckpointError(f"{path} holds a {raw.get('model_type')!r}, not a circuit")
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(f"{path} has format_version {version!r}; this hmmlvd reads "
                                  f"versions up to {FORMAT_VERSION} (upgrade hmmlvd)")
        circuit = Circuit(graph_from_dict(raw["graph"]), **raw["settings"])
    except CheckpointError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            HMMLVDError) as exc:
        raise CheckpointError(f"{path} is invalid: {exc}") from exc
    tensor_path = directory / TENSORS_FILE
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path} is missing")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path} is unreadable or truncated: {exc}") from exc
    expected = dict(circuit.named_parameters())
    if set(tensors) != set(expected):
        raise CheckpointError(f"{tensor_path} holds tensors {sorted(tensors)}, expected "
                              f"{sorted(expected)}")
    with torch.no_grad():
        for name, param in expected.items():
            if tensors[name].shape != param.shape:
                raise CheckpointError(f"{tensor_path}: {name} has shape "
                                      f"{tuple(tensors[name].shape)}, config implies "
                                      f"{tuple(param.shape)}")
            param.copy_(tensors[name])
    try:
        circuit.check_parameters()
    except HMMLVDError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    return circuit.to(device)
