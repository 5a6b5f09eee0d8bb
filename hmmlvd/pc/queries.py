"""Queries: marginals, conditionals, and ancestral sampling with or without evidence
(inpainting).

Sampling runs one forward pass with the evidence (missing inputs contribute log 1), then goes
top-down: the root sum picks a unit of the root region, each visited region's mixing layer
picks a partition, and each partition's layer picks its children's units, every choice with
probability ∝ weight × the child's value under the evidence. That is exact sampling from
p(missing | observed); with no evidence every value is 1 and the choices follow the weights.
Visited leaves finally draw their missing variables from the chosen input components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_array, check_int
from hmmlvd.pc.gumbel import pick_index
from hmmlvd.pc.layers.sum_layer import Picker

if TYPE_CHECKING:  # circuit.py imports this module (Circuit.sample); nothing here needs it at run
    from hmmlvd.pc.circuit import Circuit, Evaluation


def log_marginal(circuit: Circuit, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """[B] log p(observed part of x) for ``x`` [B, D], ``missing`` [B, D] (True = summed
    out)."""
    return _single_output(circuit, circuit.log_likelihood(x, missing))


def log_conditional(circuit: Circuit, x: torch.Tensor, query: torch.Tensor,
                    evidence: torch.Tensor | None = None) -> torch.Tensor:
    """[B] log p(x_query | x_evidence) = log p(x_query, x_evidence) - log p(x_evidence).

    ``query`` and ``evidence`` are bool masks [B, D] or [D]; evidence defaults to every
    variable not in the query. Variables in neither are summed out."""
    x = as_array(x, "data")
    query = as_array(query, "query", dtype=torch.bool)
    evidence = ~query if evidence is None else as_array(evidence, "evidence", dtype=torch.bool)
    try:
        query, evidence = query.expand(x.shape), evidence.expand(x.shape)
    except RuntimeError as exc:
        raise DataError(f"query and evidence must be masks of shape {tuple(x.shape)} or "
                        f"broadcastable to it, got {tuple(query.shape)} and "
                        f"{tuple(evidence.shape)}") from exc
    if (query & evidence).any():
        raise DataError("a variable cannot be both queried and given as evidence")
    joint = log_marginal(circuit, x, ~(query | evidence))
    return joint - log_marginal(circuit, x, ~evidence)


def sample(circuit: Circuit, num_samples: int, seed: int = 0, root_output: int = 0
           ) -> torch.Tensor:
    """[num_samples, D] samples from the circuit (from root output ``root_output``)."""
    check_int(num_samples, "number of samples", 1)
    shape = (num_samples, circuit.num_variables)
    dtype = torch.get_default_dtype() if circuit.input_kind == "gaussian" else torch.long
    x = torch.zeros(shape, dtype=dtype, device=circuit.device)
    missing = torch.ones(shape, dtype=torch.bool, device=circuit.device)
    return inpaint(circuit, x, missing, seed=seed, root_output=root_output)


def inpaint(circuit: Circuit, x: torch.Tensor, missing: torch.Tensor, seed: int = 0,
            greedy: bool = False, root_output: int = 0) -> torch.Tensor:
    """Fill the ``missing`` [B, D] entries of ``x`` [B, D] with a sample from
    p(missing | observed); observed entries are returned unchanged. ``greedy`` takes the most
    likely choice at every sum and input instead of sampling (a fast approximation of the
    most likely completion, not the exact MAP)."""
    check_int(root_output, "root output", 0)
    if root_output >= circuit.root_size:
        raise DataError(f"root output {root_output} is out of range 0..{circuit.root_size - 1}")
    prepared, observed = circuit.prepare(x, missing)
    generator = torch.Generator().manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return pick_index(logits, generator, greedy)

    with torch.no_grad():
        evaluation = circuit.evaluate(prepared, observed)
        evidence = evaluation.log_likelihood[:, root_output]
        if not torch.isfinite(evidence).all():
            row = int((~torch.isfinite(evidence)).nonzero()[0])
            raise DataError(f"the observed values of sample {row} have probability zero; "
                            "there is nothing to condition on")
        unit = choose_units(circuit, evaluation, root_output, pick)
        return fill_leaves(circuit, prepared, observed, unit, generator, greedy)


def choose_units(circuit: Circuit, evaluation: Evaluation, root_output: int, pick: Picker
                 ) -> torch.Tensor:
    """Top-down pass: [B, R] chosen unit of every visited region (-1 for the others)."""
    root = evaluation.region_values[circuit.root_location[0]][circuit.root_location[1]]
    unit = torch.full((root.shape[0], circuit.num_regions), -1, dtype=torch.long,
                      device=root.device)
    unit[:, circuit.root_index] = circuit.root_sum.choose_unit(root, root_output, pick)
    return descend(circuit, evaluation, unit, pick)


def descend(circuit: Circuit, evaluation: Evaluation, unit: torch.Tensor, pick: Picker
            ) -> torch.Tensor:
    """Top-down from the regions already chosen in ``unit`` [B, R] (a unit per visited
    region, -1 elsewhere): fill in the units of every region below them, each choice ∝
    weight × the child's value in ``evaluation``. Returns ``unit``."""
    for index in reversed(range(len(circuit.layers))):
        plan = circuit.plans[index]
        width = plan.num_single + plan.num_mixed
        batch, region = (unit[:, plan.start:plan.start + width] >= 0).nonzero(as_tuple=True)
        if len(batch) == 0:
            continue
        chosen_unit = unit[batch, plan.start + region]
        partition = region.clone()
        mixed = region >= plan.num_single
        if mixed.any():
            mixer = circuit.mixers[circuit.mixer_of[index]]
            partition[mixed] = mixer.choose_partition(
                batch[mixed], region[mixed] - plan.num_single, chosen_unit[mixed],
                evaluation.partition_values[index].transpose(0, 1), pick)
        children = plan.children.to(unit.device)
        for child_batch, child, child_unit in circuit.layers[index].choose_children(
                batch, partition, chosen_unit, evaluation.layer_inputs[index].transpose(0, 1),
                pick):
            unit[child_batch, children[child]] = child_unit
    return unit


def fill_leaves(circuit: Circuit, x: torch.Tensor, observed: torch.Tensor | None,
                 unit: torch.Tensor, generator: torch.Generator, greedy: bool) -> torch.Tensor:
    """Draw every missing variable from the component its visited leaf chose."""
    layer = circuit.input_layer
    entry_unit = unit.index_select(1, layer.entry_leaf)  # [B, E]
    active = entry_unit >= 0
    if observed is not None:
        active &= ~observed.index_select(1, layer.entry_var)
    batch, entry = active.nonzero(as_tuple=True)
    drawn = layer.sample_values(entry, entry_unit[batch, entry], generator, greedy)
    out = x.clone()
    out[batch, layer.entry_var[entry]] = drawn.to(out.dtype)
    return out


def _single_output(circuit: Circuit, log_likelihood: torch.Tensor) -> torch.Tensor:
    if circuit.root_size != 1:
        raise DataError("marginals and conditionals need a circuit with root_size 1")
    return log_likelihood
