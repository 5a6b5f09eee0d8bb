"""The memory of training an image circuit, checked against what the device has
(:mod:`hmmlvd.core.memory`) before the structure is learned or anything large is allocated, so that
a model too large for the machine fails at once with one line naming the flags to lower,
instead of growing until the kernel kills the process.

Estimate (float32; K units, C categories per pixel, B images a batch): the parameters P
(:func:`hmmlvd.pc.circuit.parameter_bound`) cost :data:`BYTES_PER_PARAMETER` bytes each (the
parameters, their EM counts, and the temporaries of initialisation and of the M-step), and every
unit value one image computes (A per image: K per input entry and K per product and per sum of
every partition, K^2 more per partition of an einsum layer) :data:`BYTES_PER_ACTIVATION` bytes
(the forward value, its gradient and temporaries). HCLT's tree is not known before it is
learned: any tree over D variables has at most D - 1 partitions and 2 (D - 1) children, which
bounds it. Image LVD evaluates every sub-circuit (patch position x latent value) on every
image, plus the top circuit over the latents.

The constants were fitted to the peak resident memory of building a model and one EM step
(E and M) on the CPU: HCLT K = 32 and 64 (B = 256, 512), PD and RAT-SPN K = 8, image LVD K = 8
and 16 with C = 4 and 8 latent values and top K = 16 and 64; the estimate lies 1.1x to 1.7x
above the measured peaks (most above them for the einsum layers of PD and RAT-SPN).

Set ``HMMLVD_SKIP_MEMORY_CHECK=1`` to skip the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hmmlvd.core import memory as device_memory
from hmmlvd.core.errors import InsufficientMemoryError
from hmmlvd.core.memory import SKIP_ENV, format_bytes
from hmmlvd.data.patches import patch_grid
from hmmlvd.image.baselines import PRODUCT, StructureConfig, baseline_graph
from hmmlvd.pc.circuit import parameter_bound
from hmmlvd.pc.structures import RegionGraph

BYTES_PER_PARAMETER = 16  # float32 parameters + counts + initialisation / M-step temporaries
BYTES_PER_ACTIVATION = 12  # float32 unit value of one image: forward, gradient, temporaries


@dataclass(frozen=True)
class CircuitSize:
    """Floats of a circuit: ``parameters`` and ``activations`` (unit values per image)."""

    parameters: int
    activations: int

    def __add__(self, other: CircuitSize) -> CircuitSize:
        return CircuitSize(self.parameters + other.parameters,
                           self.activations + other.activations)

    def training_bytes(self, batch_size: int) -> int:
        """Peak bytes of building the circuit and an EM step on ``batch_size`` images."""
        return (BYTES_PER_PARAMETER * self.parameters
                + BYTES_PER_ACTIVATION * batch_size * self.activations)


def graph_size(graph: RegionGraph, units: int, categories: int, product: str) -> CircuitSize:
    """The size of a circuit over ``graph`` with K = ``units`` and ``categories`` values per
    input (``product``: "hadamard" or "einsum")."""
    entries = sum(len(leaf) for leaf in graph.leaves())
    nodes = sum(len(p.children) + 1 for p in graph.partitions)
    einsum = len(graph.partitions) * units if product == "einsum" else 0
    return CircuitSize(parameter_bound(graph, units, categories, product, 1),
                       units * (entries + nodes + einsum))


def hclt_size(num_variables: int, units: int, categories: int) -> CircuitSize:
    """A bound on the size of an HCLT over ``num_variables`` variables, whatever its tree:
    at most D - 1 partitions with 2 (D - 1) children in all."""
    d = num_variables
    inner = max(d - 1, 0)
    return CircuitSize(d * units * categories + inner * units * units + inner * units + units,
                       units * (d + 3 * inner))


def lvd_size(shape: tuple[int, int, int], patch: int, num_latents: int, sub_units: int,
             top_units: int, categories: int, tie_inputs: bool = False) -> CircuitSize:
    """A bound on the size of an image-LVD patch circuit for images of ``shape`` (H, W, C):
    one HCLT sub-circuit per patch position and latent value (``tie_inputs``: the sub-circuits
    of a position share one set of pixel distributions), their root mixtures and the top HCLT
    over the patch latents."""
    height, width, channels = shape
    rows, cols = patch_grid(height, width, patch)
    positions, values = rows * cols, patch * patch * channels
    sub = hclt_size(values, sub_units, categories)
    inputs = values * sub_units * categories
    input_sets = positions * (1 if tie_inputs else num_latents)
    subs = CircuitSize(positions * num_latents * (sub.parameters - inputs + sub_units)
                       + input_sets * inputs, positions * num_latents * sub.activations)
    return subs + hclt_size(positions, top_units, num_latents)


def check_training(size: CircuitSize, batch_size: int, device: str | torch.device,
                   what: str, flags: str) -> int:
    """:class:`InsufficientMemoryError` if building a circuit of ``size`` (``what``, e.g.
    "HCLT K=64") and EM on batches of ``batch_size`` images need more memory than ``device``
    has available; the message names ``flags``, the settings to lower. Returns the bytes
    estimated."""
    needed = size.training_bytes(batch_size)
    device = torch.device(device)
    if device_memory.skipped():
        return needed
    available = device_memory.available_bytes(device)
    if available is not None and needed > available:
        name = "cpu" if device.type == "cpu" else str(device)
        other = "--device cuda" if device.type == "cpu" else "--device cpu"
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(needed)} for its {size.parameters:,} parameters "
            f"and EM on batches of {batch_size:,} images (the parameters alone "
            f"{format_bytes(4 * size.parameters)}); this {name} has {format_bytes(available)} "
            f"available. Lower {flags}, or use {other} (or set {SKIP_ENV}=1 to skip this "
            "check)")
    return needed


def baseline_size(kind: str, shape: tuple[int, int, int], units: int,
                  structure: StructureConfig, seed: int = 0,
                  categories: int = 256) -> CircuitSize:
    """The size of baseline ``kind`` with K = ``units`` for images of ``shape``: HCLT's bound
    (its tree is learned later), PD's and RAT-SPN's from their graphs (cheap: no data)."""
    num_variables = shape[0] * shape[1] * shape[2]
    if kind == "hclt":
        return hclt_size(num_variables, units, categories)
    graph = baseline_graph(kind, np.zeros((1, num_variables), dtype=np.int64), shape, seed,
                           categories, structure.delta, structure.depth, structure.repetitions)
    return graph_size(graph, units, categories, PRODUCT[kind])
