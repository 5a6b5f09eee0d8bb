"""Probabilistic circuits: region-graph structures kept as data (``structures``), the layers
that compute them (``layers``), the compiled ``Circuit``, EM and Adam training (``em``), queries
(``queries``: marginals, conditionals, sampling, inpainting), the HMM as a circuit
(``from_hmm``) and bits per dimension (``bpd``). ``Circuit.save_pretrained`` /
``Circuit.from_pretrained`` (also ``save_circuit`` / ``load_circuit``) write and read the format
of :mod:`hmmlvd.core.persist`. Image models (the patch-latent circuit of image LVD, the HCLT / PD /
RAT-SPN baselines) are in :mod:`hmmlvd.image`.

``Circuit`` and ``PatchCircuit`` share the verbs ``fit(data, EMConfig)``, ``score(data)``,
``log_likelihood(x)``, ``sample(n, seed=...)``, ``inpaint`` and ``save_pretrained`` with
:class:`hmmlvd.HMM`, whose ``fit`` takes the same :class:`~hmmlvd.em.config.EMConfig`
(re-exported here)."""

from hmmlvd.pc.bpd import bits_per_dimension, evaluate_bpd
from hmmlvd.pc.circuit import Circuit, CircuitConfig, load_circuit, save_circuit
from hmmlvd.pc.em import EMConfig, accumulate_counts, em_step, fit_adam, fit_em, maximize
from hmmlvd.pc.from_hmm import from_hmm, to_hmm
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
    "log_conditional",
    "log_marginal",
    "maximize",
    "mutual_information",
    "poon_domingos",
    "random_binary_trees",
    "sample",
    "save_circuit",
    "to_hmm",
]
