"""Layers that compute a circuit: input distributions over leaf regions, then einsum /
Hadamard layers over partitions, mixing layers over regions with several partitions, and the
root sum. Every layer evaluates all its nodes with a few batched tensor operations."""

from hmmlvd.pc.layers.categorical import BernoulliInput, CategoricalInput
from hmmlvd.pc.layers.einsum import EinsumLayer
from hmmlvd.pc.layers.gaussian import GaussianInput
from hmmlvd.pc.layers.hadamard import HadamardLayer
from hmmlvd.pc.layers.input_layer import InputLayer
from hmmlvd.pc.layers.mixing import MixingLayer
from hmmlvd.pc.layers.root import RootSum
from hmmlvd.pc.layers.sum_layer import SumLayer

__all__ = [
    "BernoulliInput",
    "CategoricalInput",
    "EinsumLayer",
    "GaussianInput",
    "HadamardLayer",
    "InputLayer",
    "MixingLayer",
    "RootSum",
    "SumLayer",
]
