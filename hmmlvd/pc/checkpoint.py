"""Save and load circuits (and the patch-latent circuit of image LVD): ``model.safetensors``
(every parameter tensor by name) and ``config.json`` (format version, the layer settings and
the region graphs as lists of variable indices). No pickle; files are written atomically, the
config last. A config is size-checked before it is read (:data:`MAX_CONFIG_BYTES`), and the sizes
it names are type- and range-checked, and their parameters estimated against the memory
available, before anything of that size is built."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hmmlvd import memory
from hmmlvd.atomic import atomic_write, atomic_write_json, make_folder
from hmmlvd.errors import CheckpointError, HMMLVDError, ParameterError
from hmmlvd.pc.circuit import Circuit, CircuitConfig
from hmmlvd.pc.patch_circuit import PatchCircuit, PatchCircuitConfig
from hmmlvd.pc.structures import Partition, RegionGraph

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 256 * 2**20  # a config.json larger than this is not read
INIT_COPIES = 3  # float32 copies of a parameter tensor alive while it is initialised
Model = TypeVar("Model", Circuit, PatchCircuit)


def graph_to_dict(graph: RegionGraph) -> dict:
    """A region graph as JSON-ready lists."""
    return {"num_variables": graph.num_variables,
            "regions": [list(r) for r in graph.regions],
            "partitions": [[list(p.parent), [list(c) for c in p.children]]
                           for p in graph.partitions]}


def _json_int(value: object, what: str) -> int:
    """A JSON integer (not a bool, not a float such as 1e300), else :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{what} must be an integer, got {value!r:.40}")
    return value


def graph_from_dict(raw: dict) -> RegionGraph:
    """Inverse of ``graph_to_dict`` (validated; ``num_variables`` is checked against the
    regions before anything of its size is built)."""
    num_variables = _json_int(raw["num_variables"], "num_variables")
    largest = max((len(r) for r in raw["regions"] if isinstance(r, list)), default=0)
    if num_variables > largest:
        raise ParameterError(f"num_variables is {num_variables}, but no region covers more than "
                             f"{largest} variables (the root region must cover them all)")
    graph = RegionGraph(
        num_variables=num_variables,
        regions=tuple(tuple(int(v) for v in r) for r in raw["regions"]),
        partitions=tuple(Partition(tuple(int(v) for v in parent),
                                   tuple(tuple(int(v) for v in c) for c in children))
                         for parent, children in raw["partitions"]))
    graph.validate()
    return graph


def save_circuit(circuit: Circuit, directory: str | Path) -> None:
    """Write ``circuit`` into ``directory`` (created if needed)."""
    _save(circuit, directory, {"model_type": "circuit", "settings": circuit.config.to_dict(),
                               "graph": graph_to_dict(circuit.graph)})


def save_patch_circuit(model: PatchCircuit, directory: str | Path) -> None:
    """Write the patch-latent circuit of image LVD into ``directory`` (created if needed)."""
    _save(model, directory, {"model_type": "patch_circuit",
                             "settings": model.config.to_dict(),
                             "sub_graphs": [graph_to_dict(g) for g in model.sub_graphs],
                             "top_graph": graph_to_dict(model.top.graph)})


def load_circuit(directory: str | Path, device: str | torch.device = "cpu") -> Circuit:
    """Load and check a folder written by ``save_circuit``."""
    def build(raw: dict) -> Circuit:
        config = CircuitConfig.from_dict(raw["settings"])
        graph, settings = graph_from_dict(raw["graph"]), config.to_dict()
        _check_memory(_circuit_floats(graph, settings), settings)
        return Circuit.from_config(graph, config)
    return _load(directory, "circuit", build, device)


def load_patch_circuit(directory: str | Path, device: str | torch.device = "cpu"
                       ) -> PatchCircuit:
    """Load and check a folder written by ``save_patch_circuit``."""
    def build(raw: dict) -> PatchCircuit:
        config = PatchCircuitConfig.from_dict(raw["settings"])
        settings = config.to_dict()
        sub_graphs = [graph_from_dict(g) for g in raw["sub_graphs"]]
        top_graph = graph_from_dict(raw["top_graph"])
        _check_image_shape(config.image_shape, sub_graphs)
        _check_memory(_patch_circuit_floats(sub_graphs, top_graph, settings), settings)
        return PatchCircuit.from_config(sub_graphs, top_graph, config)
    return _load(directory, "patch_circuit", build, device)


LOADERS: dict[str, Callable[..., Circuit | PatchCircuit]] = {
    "circuit": load_circuit, "patch_circuit": load_patch_circuit}


# ----- sizes named by a config, checked before anything of that size is built --------------
def _positive(settings: dict, name: str, default: int = 1) -> int:
    """``settings[name]`` when it is a positive integer, else ``default`` (the model's own
    checks then name the bad value)."""
    value = settings.get(name, default)
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else default


def _graph_floats(graph: RegionGraph, units: int, values_per_entry: int, product: str,
                  root_size: int) -> int:
    """An upper bound on the float32 parameters of a circuit over ``graph``: input components
    of every leaf entry, einsum (K^3 per partition) or Hadamard (K^2 per extra child) weights,
    mixing weights (at most K per partition) and the root sums."""
    entries = sum(len(leaf) for leaf in graph.leaves())
    partitions = len(graph.partitions)
    if product == "einsum":
        sums = partitions * units ** 3
    else:
        sums = sum(len(p.children) - 1 for p in graph.partitions) * units ** 2
    return entries * units * values_per_entry + sums + partitions * units + root_size * units


def _circuit_floats(graph: RegionGraph, settings: dict) -> int:
    """Parameter floats of ``Circuit(graph, **settings)`` (an upper bound)."""
    kind = settings.get("input", "categorical")
    values = _positive(settings, "num_categories", 2) if kind == "categorical" else 2
    return _graph_floats(graph, _positive(settings, "num_units"), values,
                         settings.get("product", "einsum"), _positive(settings, "root_size"))


def _patch_circuit_floats(sub_graphs: list[RegionGraph], top_graph: RegionGraph,
                          settings: dict) -> int:
    """Parameter floats of a patch circuit (an upper bound): the sub-circuits, their root
    mixtures and the top circuit."""
    sub_units, top_units = _positive(settings, "sub_units"), _positive(settings, "top_units")
    parts = sum(_graph_floats(g, sub_units, _positive(settings, "num_categories", 256),
                              "hadamard", 1) for g in sub_graphs)
    top = _graph_floats(top_graph, top_units, _positive(settings, "num_latents"), "hadamard", 1)
    return parts + top + len(sub_graphs) * sub_units


def _check_memory(floats: int, settings: dict) -> None:
    """:class:`ParameterError` when building parameters of ``floats`` float32 values would
    need more memory than this machine has available (``HMMLVD_SKIP_MEMORY_CHECK`` skips)."""
    needed = INIT_COPIES * 4 * floats
    available = None if memory.skipped() else memory.available_bytes("cpu")
    if available is not None and needed > available:
        sizes = ", ".join(f"{k}={v!r:.24}" for k, v in settings.items()
                          if k in {"num_units", "sub_units", "top_units", "num_categories",
                                   "num_latents", "root_size"})
        raise ParameterError(f"its settings ({sizes}) ask for about {memory.format_bytes(needed)}"
                              f" to build the parameters; this machine has "
                              f"{memory.format_bytes(available)} available: the config is "
                              "damaged, or the model needs a larger machine")


def _check_image_shape(shape: tuple, sub_graphs: list[RegionGraph]) -> None:
    """The image (height, width, channels) must have no more values than the sub-circuits
    cover (every patch value lies in one sub-circuit of its patch)."""
    sides = [_json_int(v, "image_shape") for v in shape]
    covered = sum(g.num_variables for g in sub_graphs)
    if len(sides) != 3 or min(sides) < 1 or math.prod(sides) > covered:
        raise ParameterError(f"image_shape {list(shape)!r:.60} does not fit the sub-circuit "
                              f"graphs, which cover {covered:,} values")


def _save(model: nn.Module, directory: str | Path, config: dict) -> None:
    """Tensors first, then the config (so a folder with a config is complete)."""
    directory = make_folder(directory, "model folder")
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()}
    atomic_write(directory / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, **config})


def _config_path(directory: Path, what: str) -> Path:
    """``directory/config.json``, if it exists and is no larger than MAX_CONFIG_BYTES."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved hmmlvd {what}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size:,} bytes, larger than the {MAX_CONFIG_BYTES:,} "
                              "a circuit config may have: not read (damaged, or not a config)")
    return path


def saved_model_type(directory: str | Path) -> str:
    """The ``model_type`` of a saved circuit folder: "circuit" or "patch_circuit"."""
    path = _config_path(Path(directory), "circuit")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is invalid: {exc}") from exc
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if kind not in LOADERS:
        raise CheckpointError(f"{path} holds a {kind!r:.40}, not a circuit or a patch circuit")
    return kind


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"
                    ) -> Circuit | PatchCircuit:
    """A circuit or patch circuit saved by ``save_pretrained`` (or ``save_circuit`` /
    ``save_patch_circuit``), whichever the folder's config names."""
    return LOADERS[saved_model_type(directory)](directory, device)


def _load(directory: str | Path, model_type: str, build: Callable[[dict], Model],
          device: str | torch.device) -> Model:
    """Read the config, ``build`` the model it describes, fill in and check its tensors."""
    directory = Path(directory)
    path = _config_path(directory, model_type.replace("_", " "))
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
    except RecursionError as exc:
        raise CheckpointError(f"{path} is invalid: its JSON is nested too deeply") from exc
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
