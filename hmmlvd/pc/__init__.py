"""Probabilistic circuits: region-graph structures (``structures``), the layers that compute
them (``layers``), the compiled ``Circuit``, EM and Adam training (``em``), queries
(``queries``: marginals, conditionals, sampling, inpainting), the HMM as a circuit
(``from_hmm``), the patch-latent circuit of image LVD (``patch_circuit``), save/load
(``checkpoint``), bits per dimension (``bpd``), and image models end to end
(``image_models``, ``image_pipeline``, ``image_grids``: what ``hmmlvd image`` runs).

``Circuit`` and ``PatchCircuit`` share the verbs ``fit(data, EMConfig)``, ``score(data)``,
``log_likelihood(x)``, ``sample(n, seed=...)``, ``inpaint`` and ``save_pretrained`` with
:class:`hmmlvd.HMM` (whose ``fit`` takes a ``TrainConfig``)."""

from hmmlvd.pc.bpd import bits_per_dimension, evaluate_bpd
from hmmlvd.pc.checkpoint import (
    load_circuit,
    load_patch_circuit,
    load_pretrained,
    save_circuit,
    save_patch_circuit,
)
from hmmlvd.pc.circuit import Circuit, CircuitConfig
from hmmlvd.pc.em import EMConfig, accumulate_counts, em_step, fit_adam, fit_em, maximize
from hmmlvd.pc.from_hmm import from_hmm, to_hmm
from hmmlvd.pc.patch_circuit import PatchCircuit, PatchCircuitConfig
from hmmlvd.pc.queries import inpaint, log_conditional, log_marginal, sample
from hmmlvd.pc.structures import (
    Partition,
    RegionGraph,
    chain_region_graph,
    chow_liu_tree,
    hclt_region_graph,
    mutual_information,
    poon_domingos,
    random_binary_trees,
)

__all__ = [
    "Circuit",
    "CircuitConfig",
    "EMConfig",
    "Partition",
    "PatchCircuit",
    "PatchCircuitConfig",
    "RegionGraph",
    "accumulate_counts",
    "bits_per_dimension",
    "chain_region_graph",
    "chow_liu_tree",
    "em_step",
    "evaluate_bpd",
    "fit_adam",
    "fit_em",
    "from_hmm",
    "hclt_region_graph",
    "inpaint",
    "load_circuit",
    "load_patch_circuit",
    "load_pretrained",
    "log_conditional",
    "log_marginal",
    "maximize",
    "mutual_information",
    "poon_domingos",
    "random_binary_trees",
    "sample",
    "save_circuit",
    "save_patch_circuit",
    "to_hmm",
]
