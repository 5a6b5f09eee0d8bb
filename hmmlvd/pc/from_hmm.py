"""The HMM as a probabilistic circuit, and back.

An HMM over T positions is a Hadamard circuit on the chain region graph with K = H units:
leaf {t} is the emission p(x_t | z_t = k) (a categorical over the V words), region
{t..T-1} holds p(x_t..x_{T-1} | z_t = k) = p(x_t | k) * sum_j A_t[k, j] * region_{t+1}[j]
(the backward algorithm), and the root sum is the initial distribution. Its log-likelihood is
the HMM forward's, and EM on either gives the same parameters.
"""

from __future__ import annotations

import torch

from hmmlvd.core.errors import ParameterError
from hmmlvd.hmm.model import HMM
from hmmlvd.pc.circuit import Circuit
from hmmlvd.pc.structures import chain_region_graph


def from_hmm(hmm: HMM) -> Circuit:
    """The circuit of ``hmm`` (on its device). A homogeneous HMM's shared transition and
    emission are copied to every position: the circuit has the same distribution, but EM on
    it learns untied parameters."""
    length, h, v = hmm.length, hmm.num_states, hmm.vocab_size
    circuit = Circuit(chain_region_graph(length), h, input="categorical", num_categories=v,
                      product="hadamard")
    with torch.no_grad():
        emission = hmm.emission.detach().cpu().expand(length, v, h)  # [T, V, H] word-major
        circuit.input_layer.log_prob.copy_(torch.log(emission))  # leaf t is position t
        transition = hmm.transitions_for(length).detach().cpu() if length > 1 else None
        for layer, step in zip(circuit.layers, _chain_steps(circuit), strict=True):
            layer.log_weight.copy_(torch.log(transition[step])[None])
        circuit.root_sum.log_weight.copy_(torch.log(hmm.initial.detach().cpu())[None])
    return circuit.to(hmm.device)


def to_hmm(circuit: Circuit) -> HMM:
    """The (non-homogeneous) HMM of a circuit built by ``from_hmm``."""
    _check_chain(circuit)
    length = circuit.num_variables
    h, v = circuit.num_units, circuit.num_categories
    with torch.no_grad():
        emission = circuit.input_layer.log_prob.detach().exp().cpu()
        transition = torch.empty(max(length - 1, 0), h, h)
        for layer, step in zip(circuit.layers, _chain_steps(circuit), strict=True):
            transition[step] = layer.log_weight.detach()[0].exp().cpu()
        initial = circuit.root_sum.log_weight.detach()[0].exp().cpu()
    return HMM(h, v, length, initial=initial, transition=transition, emission=emission,
               device=circuit.device)


def _chain_steps(circuit: Circuit) -> list[int]:
    """Position t of each layer: the layer's one partition splits {t..T-1} into ({t}, rest)."""
    return [plan.partitions[0].parent[0] for plan in circuit.plans]


def _check_chain(circuit: Circuit) -> None:
    if (circuit.product != "hadamard" or circuit.input_kind != "categorical"
            or circuit.root_size != 1
            or circuit.graph != chain_region_graph(circuit.num_variables)):
        raise ParameterError("to_hmm needs a circuit built by from_hmm (a Hadamard circuit on "
                             "the chain region graph with categorical inputs)")
