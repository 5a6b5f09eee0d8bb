"""Save and load circuits (and the patch-latent circuit of image LVD): ``model.safetensors``
(every parameter tensor by name) and ``config.json`` (format version, the layer settings and
the region graphs as lists of variable indices). No pickle; files are written atomically, the
config last."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hmmlvd.atomic import atomic_write, atomic_write_json
from hmmlvd.errors import CheckpointError, HMMLVDError
from hmmlvd.pc.circuit import Circuit
from hmmlvd.pc.patch_circuit import PatchCircuit
from hmmlvd.pc.structures import Partition, RegionGraph

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
Model = TypeVar("Model", Circuit, PatchCircuit)


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
    _save(circuit, directory, {"model_type": "circuit", "settings": circuit.settings,
                               "graph": graph_to_dict(circuit.graph)})


def save_patch_circuit(model: PatchCircuit, directory: str | Path) -> None:
    """Write the patch-latent circuit of image LVD into ``directory`` (created if needed)."""
    _save(model, directory, {"model_type": "patch_circuit", "settings": model.settings,
                             "sub_graphs": [graph_to_dict(g) for g in model.sub_graphs],
                             "top_graph": graph_to_dict(model.top.graph)})


def load_circuit(directory: str | Path, device: str | torch.device = "cpu") -> Circuit:
    """Load and check a folder written by ``save_circuit``."""
    return _load(directory, "circuit", lambda raw: Circuit(graph_from_dict(raw["graph"]),
                                                          **raw["settings"]), device)


def load_patch_circuit(directory: str | Path, device: str | torch.device = "cpu"
                       ) -> PatchCircuit:
    """Load and check a folder written by ``save_patch_circuit``."""
    def build(raw: dict) -> PatchCircuit:
        settings = dict(raw["settings"])
        settings["image_shape"] = tuple(settings["image_shape"])
        return PatchCircuit(sub_graphs=[graph_from_dict(g) for g in raw["sub_graphs"]],
                            top_graph=graph_from_dict(raw["top_graph"]), **settings)
    return _load(directory, "patch_circuit", build, device)


def _save(model: nn.Module, directory: str | Path, config: dict) -> None:
    """Tensors first, then the config (so a folder with a config is complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()}
    atomic_write(directory / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, **config})


def _load(directory: str | Path, model_type: str, build: Callable[[dict], Model],
          device: str | torch.device) -> Model:
    """Read the config, ``build`` the model it describes, fill in and check its tensors."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved hmmlvd "
                              f"{model_type.replace('_', ' ')}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw["format_version"]
        if raw.get("model_type") != model_type:
            raise CheckpointError(f"{path} holds a {raw.get('model_type')!r}, not a "
                                  f"{model_type!r}")
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(f"{path} has format_version {version!r}; this hmmlvd reads "
                                  f"versions up to {FORMAT_VERSION} (upgrade hmmlvd)")
        model = build(raw)
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
    expected = dict(model.named_parameters())
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
        model.check_parameters()
    except HMMLVDError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    return model.to(device)
