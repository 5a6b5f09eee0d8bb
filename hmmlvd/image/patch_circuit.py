"""The patch-latent circuit of image LVD: p(x) = sum_z top(z) prod_i p_{i, z_i}(x_i).

An image's pixels are split into n patches x_i (``hmmlvd.data.patches`` order). Patch position
i has a latent Z_i with C values and, for each value c, its own sub-circuit p_{i,c} over the
patch's P pixels (group g = i * C + c); the top circuit is a distribution over Z_1..Z_n.
Summing the latents out is exact: the top circuit's input for Z_i becomes the soft evidence
``sum_c theta[i, c, k] p_{i,c}(x_i)``, so the whole is one smooth, decomposable circuit whose
log-likelihoods, marginals and samples are exact.

The G = n * C sub-circuits are computed together as one :class:`Circuit` (``parts``) over
G * P "virtual" variables: group g reads its patch into variables g*P .. g*P + P - 1, through
its own region graph shifted there (:func:`disjoint_union`). The union needs a root, a product
of every group's root; it is never used. Each group's density is a mixture of its root
region's K units with its own weights (``group_root``). Groups share no parameters, so one
batch can feed every group different patches: that is how stage (a) of LVD trains each
sub-circuit on its own patches only (:meth:`PatchCircuit.fit_parts`, whose E- and M-steps are
:meth:`PatchCircuit.group_accumulate` and :meth:`PatchCircuit.group_maximize`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hmmlvd.core import memory, persist
from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.core.validate import check_int, check_pseudocount, check_step_size
from hmmlvd.data.patches import patch_variables
from hmmlvd.em import check_possible
from hmmlvd.em.checkpoints import EMCheckpoints
from hmmlvd.em.config import EMConfig, em_config
from hmmlvd.image.parts_em import fit_parts
from hmmlvd.pc.bpd import mean_log_likelihood
from hmmlvd.pc.circuit import (
    Circuit,
    Evaluation,
    check_batch,
    config_from_dict,
    parameter_bound,
    positive_int,
)
from hmmlvd.pc.em import (
    CIRCUIT_EM,
    check_training_data,
    early_stopping,
    run_em,
    set_leaf_prior,
)
from hmmlvd.pc.gumbel import pick_index
from hmmlvd.pc.layers import SumLayer
from hmmlvd.pc.layers.categorical import marginal_histograms
from hmmlvd.pc.layers.sum_layer import maximize_layers_
from hmmlvd.pc.logspace import log_sum_exp
from hmmlvd.pc.queries import choose_units, descend, fill_leaves
from hmmlvd.pc.structures import Partition, Region, RegionGraph

MODEL_TYPE = "patch_circuit"  # the model_type of a saved patch circuit's config.json


@dataclass(frozen=True)
class PatchCircuitConfig:
    """The settings of a :class:`PatchCircuit` besides its region graphs, checked when made
    (:class:`~hmmlvd.core.errors.ParameterError` naming the bad value); what a checkpoint's
    ``config.json`` stores under ``settings``. Fields as the arguments of
    :class:`PatchCircuit`; ``image_shape`` is (height, width, channels)."""

    image_shape: tuple[int, int, int]
    patch: int
    num_latents: int
    sub_units: int
    top_units: int
    num_categories: int = 256
    tie_inputs: bool = False

    def __post_init__(self) -> None:
        shape = self.image_shape
        if (not isinstance(shape, tuple | list) or len(shape) != 3 or
                any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
            raise ParameterError(f"image_shape must be three positive integers (height, "
                                 f"width, channels), got {shape!r:.60}")
        object.__setattr__(self, "image_shape", tuple(shape))
        for name in ("patch", "num_latents", "sub_units", "top_units", "num_categories"):
            positive_int(getattr(self, name), name)
        if not isinstance(self.tie_inputs, bool):
            raise ParameterError(f"tie_inputs must be True or False, got {self.tie_inputs!r}")

    def to_dict(self) -> dict:
        """JSON-ready fields (``image_shape`` as a list); the inverse of :meth:`from_dict`."""
        return {**dataclasses.asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_dict(cls, raw: dict) -> PatchCircuitConfig:
        """A config from :meth:`to_dict`'s form; unknown or missing keys are a
        :class:`~hmmlvd.core.errors.ParameterError`."""
        return config_from_dict(cls, raw)


def disjoint_union(graphs: Sequence[RegionGraph]) -> tuple[RegionGraph, list[Region]]:
    """One region graph over the variables of all ``graphs`` side by side (graph g's variable
    v becomes ``offset_g + v``), rooted at a product of their roots. Returns it and the region
    that is each graph's root."""
    partitions: list[Partition] = []
    regions: list[Region] = []
    roots: list[Region] = []
    offset = 0
    for graph in graphs:
        def shift(region: Region, offset: int = offset) -> Region:
            return tuple(v + offset for v in region)
        partitions += [Partition(shift(p.parent), tuple(shift(c) for c in p.children))
                       for p in graph.partitions]
        regions += [shift(r) for r in graph.regions]
        roots.append(shift(graph.root))
        offset += graph.num_variables
    if len(roots) > 1:
        partitions.insert(0, Partition(tuple(range(offset)), tuple(roots)))
    return RegionGraph.from_partitions(offset, partitions, extra_regions=regions), roots


class PatchCircuit(nn.Module):
    """The circuit of image LVD over [B, H*W*C] images of categorical pixels.

    Args:
        image_shape: (height, width, channels).
        patch: patch side (divides height and width).
        sub_graphs: G = n * C region graphs over P = patch * patch * channels variables, the
            structure of sub-circuit (i, c) at index ``i * C + c``.
        top_graph: region graph over the n patch latents.
        num_latents: C, the values of each latent.
        sub_units, top_units: K of the sub-circuits and of the top circuit.
        num_categories: pixel values 0..num_categories-1.
        seed: seeds the random initial parameters.
        tie_inputs: the sub-circuits of one patch position share their input distributions
            (pixel p of patch i has the same K components under every latent value; the
            sums stay separate). Cuts the input parameters C-fold and lets every patch train
            them; needs sub-graphs in which every variable lies in one leaf (HCLT, PD).

    The settings are kept, checked, as ``config`` (a :class:`PatchCircuitConfig`);
    ``PatchCircuit.from_config(sub_graphs, top_graph, config)`` builds from one. The verbs
    ``fit`` / ``score`` / ``log_likelihood`` / ``sample`` / ``inpaint`` /
    ``save_pretrained`` are those of :class:`~hmmlvd.pc.circuit.Circuit`.
    """

    def __init__(self, image_shape: tuple[int, int, int], patch: int,
                 sub_graphs: Sequence[RegionGraph], top_graph: RegionGraph, num_latents: int,
                 sub_units: int, top_units: int, num_categories: int = 256, seed: int = 0,
                 tie_inputs: bool = False):
        super().__init__()
        self.config = PatchCircuitConfig(image_shape, patch, num_latents, sub_units, top_units,
                                         num_categories, tie_inputs)
        height, width, channels = self.config.image_shape
        index = torch.as_tensor(patch_variables(height, width, patch, channels))  # [n, P]
        n, size = index.shape
        if len(sub_graphs) != n * num_latents:
            raise ParameterError(f"{n} patches x {num_latents} latent values need "
                                 f"{n * num_latents} sub-circuit graphs, got {len(sub_graphs)}")
        wrong = [g for g, graph in enumerate(sub_graphs) if graph.num_variables != size]
        if wrong:
            raise ParameterError(f"sub-circuit graph {wrong[0]} has "
                                 f"{sub_graphs[wrong[0]].num_variables} variables; a "
                                 f"{patch}x{patch}x{channels} patch has {size}")
        if top_graph.num_variables != n:
            raise ParameterError(f"the top graph has {top_graph.num_variables} variables, the "
                                 f"image has {n} patches")
        self.image_shape = (height, width, channels)
        self.patch, self.num_latents, self.num_categories = patch, num_latents, num_categories
        self.fit_history: list[float] = []  # mean log-likelihood per epoch of the last fit
        self.valid_history: list[float] = []  # held-out mean log-likelihood per epoch
        self.sub_graphs = list(sub_graphs)
        union, roots = disjoint_union(sub_graphs)
        self.parts = Circuit(union, sub_units, "categorical", num_categories, "hadamard",
                             seed=seed)
        if tie_inputs:
            self._tie_inputs(size)
        self.top = Circuit(top_graph, top_units, "categorical", num_latents, "hadamard",
                           seed=seed + 1)
        self.group_root = SumLayer((len(sub_graphs), sub_units), (-1,),
                                   torch.Generator().manual_seed(seed + 2))
        self.register_buffer("patch_index", index, persistent=False)
        self.register_buffer("group_regions", torch.tensor(
            [self.parts.position[r] for r in roots], dtype=torch.long), persistent=False)

    def _tie_inputs(self, size: int) -> None:
        """Share each (patch position, pixel)'s input distributions over the latent values."""
        layer = self.parts.input_layer
        if len(layer.entry_var) != self.parts.num_variables:
            raise ParameterError("tie_inputs needs sub-circuit graphs in which every variable "
                                 "lies in one leaf (HCLT, PD; not RAT-SPN repetitions)")
        group, pixel = layer.entry_var // size, layer.entry_var % size
        layer.tie_((group // self.num_latents) * size + pixel)

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.patch_index.shape[0]

    @property
    def num_groups(self) -> int:
        return len(self.group_regions)

    @property
    def num_variables(self) -> int:
        return self.patch_index.numel()

    @property
    def device(self) -> torch.device:
        return self.group_root.log_weight.device

    def num_parameters(self) -> int:
        """Free parameters: every sub-circuit, its root mixture, the top circuit (the unused
        product over the groups' roots excluded)."""
        unused = self.parts.root_sum.num_parameters()
        if self.num_groups > 1:
            unused += self.parts.layers[-1].num_parameters()
        return (self.parts.num_parameters() - unused + self.group_root.num_parameters()
                + self.top.num_parameters())

    def summary(self) -> str:
        return (f"patch LVD circuit: {self.num_patches} patches of {self.patch}x{self.patch}, "
                f"C={self.num_latents} latent values, sub-circuits K={self.parts.num_units}, "
                f"top K={self.top.num_units}; {self.num_parameters():,} parameters")

    # ----- data ----------------------------------------------------------------------------
    def check_images(self, x: torch.Tensor, missing: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate ``x`` [B, D] integer pixels (and the ``missing`` [B, D] bool mask);
        return them on the circuit's device (missing pixels' values replaced by 0)."""
        x, missing = check_batch(x, missing, self.num_variables, self.device, "images")
        observed = torch.ones_like(x, dtype=torch.bool) if missing is None else ~missing
        return self.parts.input_layer.check_data(x, observed), missing

    def virtual(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] images (or masks) -> [B, G * P]: every group reads its patch."""
        patches = x.index_select(1, self.patch_index.flatten()).view(
            len(x), self.num_patches, 1, -1)
        size = patches.shape[-1]
        return patches.expand(-1, -1, self.num_latents, -1).reshape(len(x), -1, size).flatten(1)

    # ----- evaluation ----------------------------------------------------------------------
    def _groups(self, virtual_x: torch.Tensor, virtual_missing: torch.Tensor | None = None,
                track_density: bool = False
                ) -> tuple[torch.Tensor, Evaluation, torch.Tensor, torch.Tensor | None]:
        """Every group on its virtual variables: (log p_g [B, G], the parts' evaluation,
        the prepared data and observed mask)."""
        prepared, observed = self.parts.prepare(virtual_x, virtual_missing)
        evaluation = self.parts.evaluate(prepared, observed, track_density=track_density)
        roots = self.parts.region_values(evaluation, self.group_regions)  # [B, G, K]
        return log_sum_exp(roots + self.group_root.log_weight, -1), evaluation, prepared, observed

    def _top(self, group_log_likelihood: torch.Tensor) -> Evaluation:
        """The top circuit with each latent's input replaced by its soft evidence."""
        evidence = group_log_likelihood.view(len(group_log_likelihood), self.num_patches,
                                             self.num_latents)
        layer = self.top.input_layer
        density = layer.soft_evidence_density(evidence.index_select(1, layer.entry_var))
        return self.top.evaluate_density(density)

    def forward(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """[B] log p(x) of images ``x`` [B, D]; with ``missing`` [B, D] the marginal of the
        observed pixels."""
        x, missing = self.check_images(x, missing)
        virtual_missing = None if missing is None else self.virtual(missing)
        groups = self._groups(self.virtual(x), virtual_missing)[0]
        return self._top(groups).log_likelihood[:, 0]

    def log_likelihood(self, x: torch.Tensor, missing: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """``forward`` without gradients."""
        with torch.no_grad():
            return self(x, missing)

    def group_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, C] log p_{i,c}(x_i) of every patch under every sub-circuit (no gradients)."""
        x, _ = self.check_images(x)
        with torch.no_grad():
            groups = self._groups(self.virtual(x))[0]
        return groups.view(len(x), self.num_patches, self.num_latents)

    # ----- learning ------------------------------------------------------------------------
    def group_em_step(self, patches: torch.Tensor, present: torch.Tensor,
                      step_size: float = 1.0, pseudocount: float = 0.0) -> float:
        """Stage (a) of LVD, one EM step of the sub-circuits alone: ``patches`` [B, G, P]
        holds for each group its own patches, ``present`` [B, G] (bool) which of them are
        real; each sub-circuit learns from its present patches only (a group with none keeps
        its parameters). Returns the mean log-likelihood of the present patches."""
        check_step_size(step_size)
        check_pseudocount(pseudocount)
        total, count = self.group_accumulate(patches, present)
        self.group_maximize(step_size, pseudocount)
        return total / count

    def group_accumulate(self, patches: torch.Tensor, present: torch.Tensor
                         ) -> tuple[float, int]:
        """The E-step of :meth:`group_em_step`: adds the sub-circuits' expected counts from
        their present patches; returns (summed log-likelihood, number of present patches)."""
        b, g, _ = patches.shape
        present = present.to(self.device)
        if g != self.num_groups or present.shape != (b, g) or not present.any():
            raise DataError(f"group batches need patches [B, {self.num_groups}, P] and a "
                            f"non-empty present mask [B, {self.num_groups}], got "
                            f"{tuple(patches.shape)} and {tuple(present.shape)}")
        log_p, evaluation, prepared, _ = self._groups(patches.reshape(b, -1),
                                                      track_density=True)
        chosen = torch.where(present, log_p, torch.zeros_like(log_p))
        check_possible(chosen, "patches", "patch circuit")
        chosen.sum().backward()
        self.parts.input_layer.accumulate_(prepared, evaluation.density.grad, None)
        return float(chosen.detach().sum()), int(present.sum())

    def group_maximize(self, step_size: float = 1.0, pseudocount: float = 0.0) -> None:
        """The M-step of :meth:`group_em_step`: the sub-circuits (not the top) from their
        counts."""
        self._maximize(step_size, pseudocount, top=False)

    def em_step(self, x: torch.Tensor, step_size: float = 1.0, pseudocount: float = 0.0,
                missing: torch.Tensor | None = None) -> float:
        """One EM step of the whole circuit on images ``x`` [B, D] (stage (c) of LVD);
        returns their mean log-likelihood before the update."""
        check_step_size(step_size)
        check_pseudocount(pseudocount)
        total = self.accumulate_counts(x, missing)
        self.maximize(step_size, pseudocount)
        return total / len(x)

    def accumulate_counts(self, x: torch.Tensor, missing: torch.Tensor | None = None
                          ) -> float:
        """E-step of the whole circuit on images ``x`` [B, D] (``missing`` [B, D]): add the
        expected counts of every part to its accumulators; returns the summed
        log-likelihood. DataError if an image has probability zero."""
        x, missing = self.check_images(x, missing)
        virtual_missing = None if missing is None else self.virtual(missing)
        groups, evaluation, prepared, observed = self._groups(
            self.virtual(x), virtual_missing, track_density=True)
        log_likelihood = self._top(groups).log_likelihood[:, 0]
        check_possible(log_likelihood, "images", "patch circuit")
        log_likelihood.sum().backward()
        self.parts.input_layer.accumulate_(prepared, evaluation.density.grad, observed)
        self.top.input_layer.take_gradient_counts_()
        return float(log_likelihood.detach().sum())

    def maximize(self, step_size: float = 1.0, pseudocount: float = 0.0) -> None:
        """M-step of every part from the counts :meth:`accumulate_counts` collected."""
        check_step_size(step_size)
        check_pseudocount(pseudocount)
        self._maximize(step_size, pseudocount, top=True)

    def set_leaf_prior(self, kind: str, x: torch.Tensor,
                       missing: torch.Tensor | None = None) -> None:
        """How the sub-circuits' pixel distributions spread the pseudocount (see
        :func:`hmmlvd.pc.em.set_leaf_prior`): "marginal" uses each pixel's histogram in images
        ``x`` [N, D] for all its copies (every latent value of its patch); the top circuit's
        inputs (over the latents, seen only through soft evidence) stay uniform."""
        x = torch.as_tensor(x)
        set_leaf_prior(self.top.input_layer, "uniform", x)
        if kind == "marginal":  # pixel histograms, read by every copy of the pixel
            source = self.virtual(torch.arange(self.num_variables, device=self.device)[None])[0]
            pixels = marginal_histograms(x, self.num_categories, missing)
            self.parts.input_layer.set_prior_(pixels.index_select(0, source.cpu()))
        else:
            set_leaf_prior(self.parts.input_layer, kind, x)

    def discard_counts(self) -> None:
        """Drop every accumulated count (after a failed E-step), keeping the parameters."""
        for circuit in (self.parts, self.top):
            circuit.input_layer.discard_counts_()
        self.top.input_layer.log_prob.grad = None
        for layer in [*self.parts.sum_layers(), self.group_root, *self.top.sum_layers()]:
            layer.log_weight.grad = None

    @torch.no_grad()
    def _maximize(self, step_size: float, pseudocount: float, top: bool) -> None:
        layers = [*self.parts.sum_layers(), self.group_root]
        self.parts.input_layer.maximize_(step_size, pseudocount)
        if top:
            self.top.input_layer.maximize_(step_size, pseudocount)
            layers += self.top.sum_layers()
        maximize_layers_(layers, step_size, pseudocount)

    # ----- sklearn-like verbs (the same on Circuit and HMM) --------------------------------
    def fit(self, data: torch.Tensor, config: EMConfig | None = None, *,
            valid: torch.Tensor | None = None, missing: torch.Tensor | None = None,
            progress: bool = True, checkpoints: EMCheckpoints | None = None,
            desc: str = "EM") -> PatchCircuit:
        """Train the whole circuit by joint EM (stage (c) of LVD) on images ``data`` [N, D]
        with ``config`` (an :class:`~hmmlvd.em.config.EMConfig`; default ``CIRCUIT_EM``); returns
        self. ``fit_history`` then holds the mean training log-likelihood of each epoch;
        ``valid`` [M, D]: held-out images, as in :meth:`Circuit.fit
        <hmmlvd.pc.circuit.Circuit.fit>` (``valid_history``, ``config.patience``, best epoch
        kept; ``checkpoints`` as there). The epoch loop is :func:`hmmlvd.pc.em.run_em`, the
        one :func:`~hmmlvd.pc.em.fit_em` runs; ``desc`` names it on the progress bar."""
        config = em_config(config, CIRCUIT_EM)
        data, missing = check_training_data(data, self.num_variables, missing)
        self.set_leaf_prior(config.leaf_prior, data, missing)
        early = early_stopping(self, valid, config)
        if checkpoints is not None:
            checkpoints.watch(self)
        self.fit_history = run_em(self.accumulate_counts, self.maximize, self.discard_counts,
                                  data, config, missing, progress, desc=desc, early=early,
                                  checkpoints=checkpoints)
        self.valid_history = [] if early is None else early.scores
        return self

    def fit_parts(self, data: torch.Tensor, labels: object, config: EMConfig | None = None, *,
                  progress: bool = True, desc: str = "EM sub-circuits") -> PatchCircuit:
        """Train every sub-circuit (i, c) by EM on its own patches only (stage (a) of LVD):
        the patches at position i of the images ``data`` [N, D] whose latent ``labels``
        [N, n] (values in [0, C)) is c at i; the top circuit is untouched. ``config``: an
        :class:`~hmmlvd.em.config.EMConfig` (default ``CIRCUIT_EM``; ``pseudocount_per``
        "batch", ``patience`` 0). Returns self; ``fit_history`` then holds the mean
        log-likelihood per patch of each epoch. See :func:`hmmlvd.image.parts_em.fit_parts`."""
        config = em_config(config, CIRCUIT_EM)
        self.fit_history = fit_parts(self, data, labels, config, progress, desc)
        self.valid_history = []
        return self

    def score(self, data: torch.Tensor, batch_size: int = 512) -> float:
        """Mean log-likelihood per image, in nats, of ``data`` [N, D] (sklearn's ``score``,
        as :meth:`Circuit.score <hmmlvd.pc.circuit.Circuit.score>`); -inf if an image has
        probability zero."""
        return mean_log_likelihood(self.log_likelihood, data, batch_size)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the patch circuit into ``directory`` (created if needed;
        :mod:`hmmlvd.core.persist`): ``model.safetensors`` (every parameter by name) and
        ``config.json`` (``model_type`` "patch_circuit", ``settings``:
        :meth:`PatchCircuitConfig.to_dict`, ``sub_graphs`` and ``top_graph``:
        :meth:`RegionGraph.to_dict <hmmlvd.pc.structures.RegionGraph.to_dict>`), the config
        last."""
        persist.save(directory, dict(self.named_parameters()),
                     {"settings": self.config.to_dict(),
                      "sub_graphs": [g.to_dict() for g in self.sub_graphs],
                      "top_graph": self.top.graph.to_dict()}, MODEL_TYPE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        device: str | torch.device = "cpu") -> PatchCircuit:
        """Load a patch circuit written by :meth:`save_pretrained`, on ``device``, checked as
        :meth:`Circuit.from_pretrained <hmmlvd.pc.circuit.Circuit.from_pretrained>` checks a
        circuit (the image shape against the sub-circuit graphs too)."""
        return persist.load_model(directory, MODEL_TYPE, cls._from_saved_config,
                                  cls.check_parameters, "patch circuit", device)

    @classmethod
    def _from_saved_config(cls, raw: dict) -> PatchCircuit:
        """The patch circuit (fresh parameters) that a saved ``config.json`` describes."""
        config = PatchCircuitConfig.from_dict(raw["settings"])
        sub_graphs = [RegionGraph.from_dict(g) for g in raw["sub_graphs"]]
        top_graph = RegionGraph.from_dict(raw["top_graph"])
        _check_image_shape(config.image_shape, sub_graphs)
        memory.check_parameter_floats(_parameter_bound(sub_graphs, top_graph, config), {
            k: v for k, v in config.to_dict().items()
            if k in ("sub_units", "top_units", "num_categories", "num_latents")})
        return cls.from_config(sub_graphs, top_graph, config)

    @classmethod
    def from_config(cls, sub_graphs: Sequence[RegionGraph], top_graph: RegionGraph,
                    config: PatchCircuitConfig, seed: int = 0) -> PatchCircuit:
        """A patch circuit over these graphs with the settings of ``config``."""
        if not isinstance(config, PatchCircuitConfig):
            raise ParameterError(f"config must be a PatchCircuitConfig, got "
                                 f"{type(config).__name__}")
        return cls(sub_graphs=sub_graphs, top_graph=top_graph, seed=seed,
                   **{**config.to_dict(), "image_shape": config.image_shape})

    def check_parameters(self) -> None:
        """Raise ParameterError if any part holds NaN or unnormalised parameters."""
        self.parts.check_parameters()
        self.group_root.check("sub-circuit root mixtures")
        self.top.check_parameters()

    # ----- sampling ------------------------------------------------------------------------
    def sample(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        """[num_samples, D] images drawn from the circuit."""
        check_int(num_samples, "number of samples", 1)
        shape = (num_samples, self.num_variables)
        x = torch.zeros(shape, dtype=torch.long, device=self.device)
        return self.inpaint(x, torch.ones(shape, dtype=torch.bool, device=self.device), seed)

    def inpaint(self, x: torch.Tensor, missing: torch.Tensor, seed: int = 0,
                greedy: bool = False) -> torch.Tensor:
        """Fill the ``missing`` [B, D] pixels of ``x`` [B, D] with a sample from
        p(missing | observed) (``greedy``: the most likely choice at every step instead)."""
        x, missing = self.check_images(x, missing)
        generator = torch.Generator().manual_seed(seed)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return pick_index(logits, generator, greedy)

        with torch.no_grad():
            groups, evaluation, prepared, observed = self._groups(
                self.virtual(x), self.virtual(missing))
            top = self._top(groups)
            _check_finite(top.log_likelihood[:, 0], "the observed part of an image")
            latent = self._choose_latents(groups, top, pick)  # [B, n]
            group = torch.arange(self.num_patches, device=x.device) * self.num_latents + latent
            roots = self.parts.region_values(evaluation, self.group_regions)
            logits = (self.group_root.log_weight[group]
                      + roots.gather(1, group[:, :, None].expand(-1, -1, roots.shape[-1])))
            unit = torch.full((len(x), self.parts.num_regions), -1, dtype=torch.long,
                              device=x.device)
            unit.scatter_(1, self.group_regions[group], pick(logits.flatten(0, 1)).view_as(group))
            descend(self.parts, evaluation, unit, pick)
            filled = fill_leaves(self.parts, prepared, observed, unit, generator, greedy)
        size = self.patch_index.shape[1]
        chosen = filled.view(len(x), self.num_groups, size).gather(
            1, group[:, :, None].expand(-1, -1, size))  # [B, n, P]
        out = x.clone()
        out[:, self.patch_index.flatten()] = chosen.flatten(1)
        return out

    def _choose_latents(self, groups: torch.Tensor, top: Evaluation, pick
                        ) -> torch.Tensor:
        """Top-down through the top circuit, then each latent's value c with probability
        ∝ theta[i, c, k] p_{i,c}(x_i) for its leaf's chosen unit k: [B, n]."""
        unit = choose_units(self.top, top, 0, pick)
        layer = self.top.input_layer
        entry_unit = unit.index_select(1, layer.entry_leaf)  # [B, E]
        evidence = groups.view(len(groups), self.num_patches, self.num_latents)
        theta = layer.log_prob.detach()[layer.entry_row]  # [E, C, K]
        entries = torch.arange(layer.num_entries, device=unit.device)
        logits = (theta[entries[None, :], :, entry_unit]  # [B, E, C]
                  + evidence.index_select(1, layer.entry_var))
        latent = torch.empty(len(unit), self.num_patches, dtype=torch.long, device=unit.device)
        latent[:, layer.entry_var] = pick(logits.flatten(0, 1)).view(len(unit), -1)
        return latent


save_patch_circuit = PatchCircuit.save_pretrained  # save_patch_circuit(model, directory)
load_patch_circuit = PatchCircuit.from_pretrained  # load_patch_circuit(directory, device="cpu")


def _parameter_bound(sub_graphs: Sequence[RegionGraph], top_graph: RegionGraph,
                     config: PatchCircuitConfig) -> int:
    """An upper bound on the float32 parameters of a patch circuit (nothing is built): the
    sub-circuits, their root mixtures and the top circuit."""
    parts = sum(parameter_bound(g, config.sub_units, config.num_categories, "hadamard", 1)
                for g in sub_graphs)
    top = parameter_bound(top_graph, config.top_units, config.num_latents, "hadamard", 1)
    return parts + top + len(sub_graphs) * config.sub_units


def _check_image_shape(shape: tuple[int, int, int], sub_graphs: Sequence[RegionGraph]) -> None:
    """:class:`ParameterError` unless the image (height, width, channels) has at most as many
    values as the sub-circuit graphs cover (every patch value lies in one sub-circuit of its
    patch): checked before the patch index of that size is built."""
    covered = sum(g.num_variables for g in sub_graphs)
    if math.prod(shape) > covered:
        raise ParameterError(f"image_shape {list(shape)!r:.60} does not fit the sub-circuit "
                             f"graphs, which cover {covered:,} values")


def _check_finite(log_likelihood: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(log_likelihood)
    if bad.any():
        raise DataError(f"{what} (sample {int(bad.nonzero()[0][0])}) has probability zero under "
                        "the circuit: there is nothing to condition on")
