"""A probabilistic circuit compiled from a region graph into layers, and its forward pass.

Every region holds K units (log-values of K sum nodes, or of K input components for a leaf).
Regions are numbered leaves first, then the regions of each topological layer:

    input layer  -> leaves                      [L, B, K]
    for each layer: product+sum layer -> partitions [P_l, B, K]
                    mixing layer      -> regions with several partitions
    root sum     -> log-likelihood              [B, root_size]

Values inside the circuit are region-major, [regions, B, K]: every gather, concatenation and
scatter moves whole contiguous [B, K] blocks, and each layer's batched matrix products read
their operands in place. Each layer reads only its own child regions, as one tensor
[C_l, B, K]. To keep the backward
pass linear in the circuit's size, a *source* (the leaves, or one layer's regions) is read
once, by one :class:`~hmmlvd.pc.rows.RowReader` of everything later layers need from it, in
per-consumer chunks; a layer concatenates the chunks it receives. (Writing all regions
into one shared buffer instead would make every layer's backward touch the whole buffer.)

The structure (``RegionGraph``) stays separate from the layers that compute it; ``product``
chooses the layer type: ``"einsum"`` (EiNet: outer product of two children, K x K x K weights)
or ``"hadamard"`` (element-wise product of the first child with K x K sums of the others, the
block of HCLTs and HMMs; partitions of any arity).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hmmlvd.core import memory, persist
from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.core.validate import as_array
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig, em_config
from hmmlvd.pc.bpd import mean_log_likelihood
from hmmlvd.pc.em import CIRCUIT_EM, early_stopping, fit_em
from hmmlvd.pc.layers import (
    BernoulliInput,
    CategoricalInput,
    EinsumLayer,
    GaussianInput,
    HadamardLayer,
    InputLayer,
    MixingLayer,
    RootSum,
    SumLayer,
)
from hmmlvd.pc.queries import inpaint as inpaint_circuit
from hmmlvd.pc.queries import sample as sample_circuit
from hmmlvd.pc.rows import RowReader
from hmmlvd.pc.structures import Partition, Region, RegionGraph

INPUTS = ("categorical", "bernoulli", "gaussian")
PRODUCTS = ("einsum", "hadamard")
MODEL_TYPE = "circuit"  # the model_type of a saved circuit's config.json


@dataclass(frozen=True)
class CircuitConfig:
    """The settings of a :class:`Circuit` besides its region graph, checked when made
    (:class:`~hmmlvd.core.errors.ParameterError` naming the bad value); what a checkpoint's
    ``config.json`` stores under ``settings``.

    ``num_units``: K, units per region; ``input``: "categorical" (needs ``num_categories``),
    "bernoulli" (``num_categories`` becomes 2) or "gaussian" (``num_categories`` becomes None;
    variances clamped to [``min_var``, ``max_var``]); ``product``: "einsum" or "hadamard";
    ``root_size``: number of root sums."""

    num_units: int
    input: str = "categorical"
    num_categories: int | None = None
    product: str = "einsum"
    root_size: int = 1
    min_var: float = 1e-6
    max_var: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("num_units", "root_size"):
            positive_int(getattr(self, name), name)
        if not isinstance(self.input, str) or self.input not in INPUTS:
            raise ParameterError(f"input must be one of {INPUTS}, got {self.input!r}")
        if not isinstance(self.product, str) or self.product not in PRODUCTS:
            raise ParameterError(f"product must be one of {PRODUCTS}, got {self.product!r}")
        categories = {"bernoulli": 2, "gaussian": None}.get(self.input, self.num_categories)
        if self.input == "categorical":
            positive_int(categories, "num_categories",
                          "categorical inputs need num_categories >= 1")
        object.__setattr__(self, "num_categories", categories)
        for name in ("min_var", "max_var"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number, got {value!r}")
        if not 0 < self.min_var <= self.max_var:
            raise ParameterError(f"need 0 < min_var <= max_var, got {self.min_var}, "
                                 f"{self.max_var}")

    def to_dict(self) -> dict:
        """JSON-ready fields (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> CircuitConfig:
        """A config from :meth:`to_dict`'s form; unknown or missing keys are a
        :class:`~hmmlvd.core.errors.ParameterError`."""
        return config_from_dict(cls, raw)


def positive_int(value: object, name: str, message: str | None = None) -> int:
    """``value`` if it is an int >= 1 (not a bool), else :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{message or f'{name} must be a positive integer'}, got "
                             f"{value!r}")
    return value


def config_from_dict(cls: type, raw: object) -> object:
    """``cls(**raw)`` for a dataclass ``cls``, naming unknown or missing keys."""
    if not isinstance(raw, dict):
        raise ParameterError(f"{cls.__name__} settings must be a JSON object, got "
                             f"{type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParameterError(f"unknown {cls.__name__} settings {unknown}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if required - set(raw):
        raise ParameterError(f"{cls.__name__} settings lack {sorted(required - set(raw))}")
    return cls(**raw)


def check_batch(x: object, missing: object, num_variables: int,
                device: torch.device | str | None = None, what: str = "data"
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch ``x`` [B >= 1, num_variables] and its optional ``missing`` bool mask of the same
    shape, as tensors on ``device``; DataError naming ``what`` otherwise. (Values are the
    input layer's to check.)"""
    x = as_array(x, what, device)
    if x.dim() != 2 or x.shape[1] != num_variables:
        raise DataError(f"{what} must have shape [batch, {num_variables}], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{what}: the batch is empty (0 samples)")
    if missing is not None:
        missing = as_array(missing, "missing", device)
        if missing.dtype != torch.bool or missing.shape != x.shape:
            raise DataError(f"missing must be a bool mask of shape {tuple(x.shape)}, got "
                            f"{missing.dtype} {tuple(missing.shape)}")
    return x, missing


@dataclass
class Evaluation:
    """Everything one forward pass computed: ``log_likelihood`` [B, root_size], the region
    values per source, region-major (``region_values[0]`` the leaves [L, B, K],
    ``region_values[l + 1]`` layer l's regions), each layer's input ``layer_inputs[l]``
    [C_l, B, K] and partition values ``partition_values[l]`` [P_l, B, K], and the input
    entries' log-densities ``density`` [B, E, K] (what EM differentiates)."""

    log_likelihood: torch.Tensor
    region_values: list[torch.Tensor]
    layer_inputs: list[torch.Tensor]
    partition_values: list[torch.Tensor]
    density: torch.Tensor


@dataclass(frozen=True)
class LayerPlan:
    """Layer l's place in the region numbering: its regions are ``start .. start +
    num_single + num_mixed``, single-partition regions first, then mixed ones. Its partitions
    are ordered by region, so partition i < num_single is the only partition of region
    ``start + i``. ``children``: the region numbers of the layer's input, in order."""

    start: int
    num_single: int
    num_mixed: int
    children: torch.Tensor
    partitions: tuple[Partition, ...]


class Circuit(nn.Module):
    """A smooth, decomposable circuit over ``graph.num_variables`` variables.

    Args:
        graph: the region graph (validated here).
        num_units: K, the vector length of every region (input components per leaf, sums per
            region).
        input: "categorical" (needs ``num_categories``), "bernoulli" or "gaussian".
        product: "einsum" (binary partitions only) or "hadamard".
        root_size: number of root sums (1 for a density; more for e.g. one per class).
        seed: seeds the random initial parameters.
        min_var, max_var: Gaussian variance bounds (see GaussianInput).

    The settings are kept, checked, as ``config`` (a :class:`CircuitConfig`);
    ``Circuit.from_config(graph, config)`` builds from one. The sklearn-like verbs
    ``fit`` / ``score`` / ``log_likelihood`` / ``sample`` (and ``inpaint``,
    ``save_pretrained``) are the same on :class:`~hmmlvd.hmm.HMM` and
    :class:`~hmmlvd.image.patch_circuit.PatchCircuit`.
    """

    def __init__(self, graph: RegionGraph, num_units: int, input: str = "categorical",
                 num_categories: int | None = None, product: str = "einsum",
                 root_size: int = 1, seed: int = 0, min_var: float = 1e-6,
                 max_var: float = 1e-2):
        super().__init__()
        self.config = CircuitConfig(num_units, input, num_categories, product, root_size,
                                    min_var, max_var)
        graph.validate()
        self.graph = graph
        self.num_units = num_units
        self.input_kind = input
        self.num_categories = self.config.num_categories
        self.product = product
        self.root_size = root_size
        self.fit_history: list[float] = []  # mean log-likelihood per epoch of the last fit
        self.valid_history: list[float] = []  # held-out mean log-likelihood per epoch
        generator = torch.Generator().manual_seed(seed)

        leaves = graph.leaves()
        self.position: dict[Region, int] = {r: i for i, r in enumerate(leaves)}
        self.input_layer = _make_input(leaves, self.config, generator)
        self.plans: list[LayerPlan] = []
        self.layers = nn.ModuleList()
        self.mixers = nn.ModuleList()
        self.mixer_of: list[int] = []  # layer index -> index into mixers, or -1
        partitions_of = graph.partitions_of()
        for layer in graph.topological_layers():
            self._add_layer(layer, partitions_of, generator)
        self.num_regions = len(self.position)
        self.root_index = self.position[graph.root]
        self.root_sum = RootSum(root_size, num_units, generator)
        self._plan_reads()

    # ----- construction --------------------------------------------------------------------
    def _add_layer(self, layer: list[Partition], partitions_of: dict[Region, list[Partition]],
                   generator: torch.Generator) -> None:
        """Order the layer's regions (single-partition first), place them in the buffer, and
        build its product+sum layer and (if needed) its mixing layer."""
        parents = list(dict.fromkeys(p.parent for p in layer))
        single = [r for r in parents if len(partitions_of[r]) == 1]
        mixed = [r for r in parents if len(partitions_of[r]) > 1]
        start = len(self.position)
        for r in single + mixed:
            self.position[r] = len(self.position)
        ordered = [p for r in single + mixed for p in partitions_of[r]]
        index_of = {id(p): i for i, p in enumerate(ordered)}
        build = self._einsum_layer if self.product == "einsum" else self._hadamard_layer
        product, children = build(ordered, generator)
        self.layers.append(product)
        if mixed:
            width = max(len(partitions_of[r]) for r in mixed)
            slots = torch.zeros(len(mixed), width, dtype=torch.long)
            valid = torch.zeros(len(mixed), width, dtype=torch.bool)
            for i, r in enumerate(mixed):
                ids = [index_of[id(p)] for p in partitions_of[r]]
                slots[i, :len(ids)] = torch.tensor(ids)
                valid[i, :len(ids)] = True
            self.mixer_of.append(len(self.mixers))
            self.mixers.append(MixingLayer(slots, valid, self.num_units, generator,
                                           num_inputs=len(ordered)))
        else:
            self.mixer_of.append(-1)
        self.plans.append(LayerPlan(
            start=start, num_single=len(single), num_mixed=len(mixed),
            children=torch.tensor(children, dtype=torch.long), partitions=tuple(ordered)))

    def _bounds(self) -> list[int]:
        """Where the regions of each source end (source 0: the leaves, l + 1: layer l): source
        s holds region numbers ``bounds[s-1] .. bounds[s] - 1``, for the layers placed so far."""
        return [self.input_layer.num_leaves] + [
            plan.start + plan.num_single + plan.num_mixed for plan in self.plans]

    @staticmethod
    def _sources(positions: Sequence[int] | torch.Tensor, bounds: Sequence[int]
                 ) -> torch.Tensor:
        """[M] the source holding each region number in ``positions`` [M] (see _bounds)."""
        return torch.bucketize(torch.as_tensor(positions, dtype=torch.long),
                               torch.tensor(bounds), right=True)

    def _einsum_layer(self, partitions: list[Partition], generator: torch.Generator
                      ) -> tuple[SumLayer, list[int]]:
        """The einsum layer computing ``partitions`` and the region numbers its input holds
        (each child region once, in numbering order)."""
        wide = [p for p in partitions if len(p.children) != 2]
        if wide:
            raise ParameterError(
                f"einsum layers need binary partitions, but region {wide[0].parent} is "
                f"split into {len(wide[0].children)} children: use product='hadamard'")
        children = sorted({self.position[c] for p in partitions for c in p.children})
        local = {g: i for i, g in enumerate(children)}
        left, right = (torch.tensor([local[self.position[p.children[side]]] for p in partitions])
                       for side in (0, 1))
        return EinsumLayer(left, right, self.num_units, generator,
                           num_inputs=len(children)), children

    def _hadamard_layer(self, partitions: list[Partition], generator: torch.Generator
                        ) -> tuple[SumLayer, list[int]]:
        """The Hadamard layer computing ``partitions`` and the region numbers its input holds,
        in block layout: the partitions' first children, then their other children (each edge
        once), each block stably sorted by source, so that every source's rows are
        consecutive runs (read without a gather)."""
        firsts = [self.position[p.children[0]] for p in partitions]
        edges = [self.position[c] for p in partitions for c in p.children[1:]]
        bounds = self._bounds()
        first_rows, edge_rows = (torch.argsort(self._sources(rows, bounds), stable=True).tolist()
                                 for rows in (firsts, edges))
        first = torch.empty(len(firsts), dtype=torch.long)  # row of each partition's first
        first[torch.tensor(first_rows, dtype=torch.long)] = torch.arange(len(firsts))
        edge_child = torch.empty(len(edges), dtype=torch.long)  # row of each edge's child
        edge_child[torch.tensor(edge_rows, dtype=torch.long)] = torch.arange(
            len(firsts), len(firsts) + len(edges))
        edge_partition = torch.tensor([i for i, p in enumerate(partitions)
                                       for _ in p.children[1:]])
        children = [firsts[i] for i in first_rows] + [edges[i] for i in edge_rows]
        return HadamardLayer(first, edge_child, edge_partition, self.num_units, generator,
                             num_inputs=len(children)), children

    def _plan_reads(self) -> None:
        """For every source (0: leaves, l + 1: layer l), the one read of what later layers
        need from it (``self.readers[s]``, a :class:`~hmmlvd.pc.rows.RowReader`), in chunks:
        ``self.chunks[s]``, (layer, slot) per chunk. A layer's input is its slots
        concatenated in order: each slot is a run of its ``children`` held by one source."""
        bounds = self._bounds()
        self.source_bounds = bounds  # source s holds regions source_bounds[s-1] .. [s] - 1
        starts = [0, *bounds[:-1]]
        self.chunks: list[list[tuple[int, int]]] = [[] for _ in bounds]
        self.num_slots: list[int] = []
        reads: list[list[int]] = [[] for _ in bounds]
        sizes: list[list[int]] = [[] for _ in bounds]
        for layer, plan in enumerate(self.plans):
            source_of = self._sources(plan.children, bounds)
            runs = torch.unique_consecutive(source_of, return_counts=True)
            position = 0
            for slot, (source, size) in enumerate(zip(*(t.tolist() for t in runs),
                                                      strict=True)):
                run = plan.children[position:position + size] - starts[source]
                reads[source].extend(run.tolist())
                sizes[source].append(size)
                self.chunks[source].append((layer, slot))
                position += size
            self.num_slots.append(len(runs[0]))
        self.readers = nn.ModuleList(
            RowReader(torch.tensor(index, dtype=torch.long), hi - lo, size)
            for index, lo, hi, size in zip(reads, starts, bounds, sizes, strict=True))
        root_source = next(s for s, hi in enumerate(bounds) if self.root_index < hi)
        self.root_location = (root_source, self.root_index - starts[root_source])

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def num_variables(self) -> int:
        return self.graph.num_variables

    @property
    def device(self) -> torch.device:
        return self.root_sum.log_weight.device

    def sum_layers(self) -> list[SumLayer]:
        """Every layer with sum weights: product layers, mixing layers, the root sum."""
        return [*self.layers, *self.mixers, self.root_sum]

    def num_parameters(self) -> int:
        """Free parameter entries (weights, input parameters; structural zeros excluded)."""
        return self.input_layer.num_parameters() + sum(
            layer.num_parameters() for layer in self.sum_layers())

    def num_nodes(self) -> dict[str, int]:
        """Node counts by kind: ``input`` (leaf components), ``product``, ``sum``."""
        k = self.num_units
        partitions = sum(len(plan.partitions) for plan in self.plans)
        edges = sum(len(p.children) - 1 for plan in self.plans for p in plan.partitions)
        if self.product == "einsum":
            products, sums = partitions * k * k, partitions * k
        else:
            products, sums = partitions * k, edges * k
        sums += sum(m.log_weight.shape[0] * k for m in self.mixers) + self.root_size
        return {"input": self.input_layer.num_leaves * k, "product": products, "sum": sums}

    def summary(self) -> str:
        """One line: structure size, nodes and parameters."""
        nodes = self.num_nodes()
        return (f"{self.input_kind} {self.product} circuit: {self.num_variables} variables, "
                f"{self.num_regions} regions, {len(self.plans)} layers, K={self.num_units}; "
                f"{sum(nodes.values()):,} nodes ({nodes['input']:,} input, "
                f"{nodes['product']:,} product, {nodes['sum']:,} sum), "
                f"{self.num_parameters():,} parameters")

    # ----- evaluation ----------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, missing: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check data ``x`` [B, D] and the optional ``missing`` mask [B, D] (True = unobserved);
        return x as the input layer needs it (on the circuit's device) and the observed mask."""
        x, missing = check_batch(x, missing, self.num_variables, self.device)
        observed = None if missing is None else ~missing
        mask = observed if observed is not None else torch.ones_like(x, dtype=torch.bool)
        return self.input_layer.check_data(x, mask), observed

    def evaluate(self, x: torch.Tensor, observed: torch.Tensor | None = None,
                 normalise: bool = False, track_density: bool = False) -> Evaluation:
        """Forward pass on prepared data (see ``prepare``); ``normalise`` treats all weights
        as logits (for gradient training). ``track_density`` makes the input log-densities a
        leaf that requires grad (and cuts the input parameters off the graph): after
        ``backward``, ``density.grad`` holds the responsibilities EM needs."""
        density = self.input_layer.entry_log_density(x, normalise)
        if track_density:
            density = density.detach().requires_grad_()
        return self.evaluate_density(density, observed, normalise)

    def evaluate_density(self, density: torch.Tensor, observed: torch.Tensor | None = None,
                         normalise: bool = False) -> Evaluation:
        """The forward pass from given input log-densities ``density`` [B, E, K] (entry e,
        component k); ``evaluate`` computes them from data. Other densities, e.g. soft evidence
        over a latent variable's values, give the circuit with those leaves substituted."""
        region_values = [self.input_layer(density, observed)]  # [L, B, K]
        inbox: list[list[torch.Tensor | None]] = [[None] * n for n in self.num_slots]
        self._send(0, region_values[0], inbox)
        layer_inputs, partition_values = [], []
        for index, (layer, plan) in enumerate(zip(self.layers, self.plans, strict=True)):
            children = inbox[index][0] if len(inbox[index]) == 1 else torch.cat(inbox[index], 0)
            inbox[index] = []
            out = layer(children, normalise)  # [P, B, K]
            mixer_index = self.mixer_of[index]
            if mixer_index < 0:
                regions = out
            else:
                single = out[:plan.num_single]
                regions = torch.cat([single, self.mixers[mixer_index](out, normalise)], 0)
            layer_inputs.append(children)
            partition_values.append(out)
            region_values.append(regions)
            self._send(index + 1, regions, inbox)
        source, offset = self.root_location
        root = region_values[source][offset]  # [B, K]
        return Evaluation(self.root_sum(root, normalise), region_values, layer_inputs,
                          partition_values, density)

    def region_values(self, evaluation: Evaluation, regions: torch.Tensor) -> torch.Tensor:
        """[B, len(regions), K] values of the regions numbered ``regions`` [M] (in the
        numbering of ``position``), gathered from the sources that hold them."""
        source = self._sources(regions.cpu(), self.source_bounds)
        parts, order = [], []
        for s in source.unique().tolist():
            mine = (source == s).nonzero().squeeze(1)
            start = self.source_bounds[s - 1] if s else 0
            offset = (regions.cpu()[mine] - start).to(evaluation.density.device)
            parts.append(evaluation.region_values[s].index_select(0, offset))
            order.append(mine)
        values = torch.cat(parts, 0)
        inverse = torch.argsort(torch.cat(order)).to(values.device)
        return values.index_select(0, inverse).transpose(0, 1)

    def _send(self, source: int, values: torch.Tensor,
              inbox: list[list[torch.Tensor | None]]) -> None:
        """Read everything later layers need from ``values`` (source ``source``) at once and
        post each chunk into its layer's slot."""
        if not self.chunks[source]:
            return
        chunks = self.readers[source](values)
        for (layer, slot), chunk in zip(self.chunks[source], chunks, strict=True):
            inbox[layer][slot] = chunk

    def forward(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """Log-likelihood [B] (or [B, root_size]) of ``x`` [B, D]; with a ``missing`` mask the
        marginal of the observed variables."""
        prepared, observed = self.prepare(x, missing)
        out = self.evaluate(prepared, observed).log_likelihood
        return out.squeeze(1) if self.root_size == 1 else out

    def log_likelihood(self, x: torch.Tensor, missing: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """``forward`` without gradients."""
        with torch.no_grad():
            return self(x, missing)

    # ----- sklearn-like verbs (the same on HMM and PatchCircuit) ---------------------------
    def fit(self, data: torch.Tensor, config: EMConfig | None = None, *,
            valid: torch.Tensor | None = None, missing: torch.Tensor | None = None,
            progress: bool = True, checkpoints: EMCheckpoints | None = None,
            desc: str = "EM") -> Circuit:
        """Train by EM on ``data`` [N, D] (``missing`` [N, D]: True where unobserved) with
        ``config`` (an :class:`~hmmlvd.em.config.EMConfig`; default ``CIRCUIT_EM``); returns
        self. ``fit_history`` then holds the mean training log-likelihood of each epoch. With
        held-out ``valid`` [M, D]: ``valid_history`` holds its mean log-likelihood after each
        epoch, training stops after ``config.patience`` epochs without improvement (0: never
        early), and the parameters of the best epoch on ``valid`` are kept. ``checkpoints``
        (:class:`~hmmlvd.em.checkpoints.EMCheckpoints`): saved as training goes, stop requests
        honoured; resumed from if it was read back; ``desc`` names the run on the progress bar
        and in a stop message. See :func:`hmmlvd.pc.em.fit_em`, which this calls."""
        config = em_config(config, CIRCUIT_EM)
        early = early_stopping(self, valid, config)
        if checkpoints is not None:
            checkpoints.watch(self)
        self.fit_history = fit_em(self, data, config, missing=missing, progress=progress,
                                  desc=desc, early=early, checkpoints=checkpoints)
        self.valid_history = [] if early is None else early.scores
        return self

    def score(self, data: torch.Tensor, batch_size: int = 512) -> float:
        """Mean log-likelihood per sample, in nats, of ``data`` [N, D] (sklearn's ``score``:
        the per-sample average, higher is better; root output 0 when ``root_size`` > 1),
        computed in batches of ``batch_size``; -inf if a sample has probability zero."""
        return mean_log_likelihood(self._root_output_0, data, batch_size)

    def _root_output_0(self, x: torch.Tensor) -> torch.Tensor:
        out = self.log_likelihood(x)
        return out if self.root_size == 1 else out[:, 0]

    def sample(self, num_samples: int, seed: int = 0, root_output: int = 0) -> torch.Tensor:
        """[num_samples, D] samples (from root output ``root_output``), drawn by
        :func:`hmmlvd.pc.queries.sample` with a generator seeded by ``seed``."""
        return sample_circuit(self, num_samples, seed=seed, root_output=root_output)

    def inpaint(self, x: torch.Tensor, missing: torch.Tensor, seed: int = 0,
                greedy: bool = False, root_output: int = 0) -> torch.Tensor:
        """``x`` [B, D] with its ``missing`` [B, D] entries drawn from p(missing | observed):
        :func:`hmmlvd.pc.queries.inpaint`."""
        return inpaint_circuit(self, x, missing, seed=seed, greedy=greedy,
                               root_output=root_output)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the circuit into ``directory`` (created if needed; :mod:`hmmlvd.core.persist`):
        ``model.safetensors`` (every parameter by name) and ``config.json`` (``model_type``
        "circuit", ``settings``: :meth:`CircuitConfig.to_dict`, ``graph``:
        :meth:`RegionGraph.to_dict`), the config last."""
        persist.save(directory, dict(self.named_parameters()),
                     {"settings": self.config.to_dict(), "graph": self.graph.to_dict()},
                     MODEL_TYPE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        device: str | torch.device = "cpu") -> Circuit:
        """Load a circuit written by :meth:`save_pretrained`, on ``device``. The config is
        size-checked before it is read and its settings and graph are checked, and their
        parameters estimated against the memory available, before anything of that size is
        built; every problem is a :class:`~hmmlvd.core.errors.CheckpointError` naming the file."""
        return persist.load_model(directory, MODEL_TYPE, cls._from_saved_config,
                                  cls.check_parameters, "circuit", device)

    @classmethod
    def _from_saved_config(cls, raw: dict) -> Circuit:
        """The circuit (fresh parameters) that a saved ``config.json`` describes."""
        config = CircuitConfig.from_dict(raw["settings"])
        graph = RegionGraph.from_dict(raw["graph"])
        values = config.num_categories if config.input == "categorical" else 2
        floats = parameter_bound(graph, config.num_units, values, config.product,
                                 config.root_size)
        memory.check_parameter_floats(floats, {
            k: v for k, v in config.to_dict().items()
            if k in ("num_units", "num_categories", "root_size")})
        return cls.from_config(graph, config)

    @classmethod
    def from_config(cls, graph: RegionGraph, config: CircuitConfig, seed: int = 0) -> Circuit:
        """A circuit over ``graph`` with the settings of ``config``, parameters seeded by
        ``seed``."""
        if not isinstance(config, CircuitConfig):
            raise ParameterError(f"config must be a CircuitConfig, got "
                                 f"{type(config).__name__}")
        return cls(graph, seed=seed, **config.to_dict())

    # ----- parameters ----------------------------------------------------------------------
    def check_parameters(self) -> None:
        """Raise ParameterError naming the first layer with NaN or unnormalised parameters."""
        self.input_layer.check()
        for i, layer in enumerate(self.layers):
            layer.check(f"layer {i} ({type(layer).__name__})")
        for i, mixer in enumerate(self.mixers):
            mixer.check(f"mixing layer {i}")
        self.root_sum.check("root sum")

    def renormalise_(self) -> None:
        """Project every parameter back to a valid distribution (after a gradient step)."""
        self.input_layer.renormalise_()
        for layer in self.sum_layers():
            layer.renormalise_()


def parameter_bound(graph: RegionGraph, num_units: int, values_per_entry: int,
                    product: str, root_size: int) -> int:
    """An upper bound on the float32 parameters of a circuit over ``graph`` with K =
    ``num_units``, from the graph alone (nothing is built): ``values_per_entry`` per input
    component of every leaf entry (categories; 2 for Bernoulli and Gaussian), the einsum
    (K^3 per partition) or Hadamard (K^2 per child after the first) weights, the mixing
    weights (at most K per partition) and the ``root_size`` root sums."""
    entries = sum(len(leaf) for leaf in graph.leaves())
    partitions = len(graph.partitions)
    if product == "einsum":
        sums = partitions * num_units ** 3
    else:
        sums = sum(len(p.children) - 1 for p in graph.partitions) * num_units ** 2
    return (entries * num_units * values_per_entry + sums + partitions * num_units
            + root_size * num_units)


save_circuit = Circuit.save_pretrained  # save_circuit(circuit, directory)
load_circuit = Circuit.from_pretrained  # load_circuit(directory, device="cpu")


def _make_input(leaves: list[Region], config: CircuitConfig, generator: torch.Generator
                ) -> InputLayer:
    """The input layer over the leaf regions (entries in leaf order)."""
    num_units, kind = config.num_units, config.input
    entry_var = torch.tensor([v for leaf in leaves for v in leaf], dtype=torch.long)
    entry_leaf = torch.tensor([i for i, leaf in enumerate(leaves) for _ in leaf],
                              dtype=torch.long)
    if kind == "categorical":
        return CategoricalInput(entry_var, entry_leaf, len(leaves), num_units,
                                config.num_categories, generator)
    if kind == "bernoulli":
        return BernoulliInput(entry_var, entry_leaf, len(leaves), num_units, generator)
    return GaussianInput(entry_var, entry_leaf, len(leaves), num_units, config.min_var,
                         config.max_var, generator)
