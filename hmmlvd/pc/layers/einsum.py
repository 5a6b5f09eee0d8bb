"""The EiNet einsum layer: for every binary partition, the outer product of its two children's
K-vectors followed by K_out weighted sums, all partitions of a layer in one einsum."""

from __future__ import annotations

import torch

from hmmlvd.pc.layers.sum_layer import Choice, Picker, SumLayer
from hmmlvd.pc.logspace import exp_shifted, safe_log


class EinsumLayer(SumLayer):
    """P partitions, each ``S[k] = sum_{i,j} W[k, i, j] * L[i] * R[j]`` over its left and right
    children's values; ``log_weight`` is [P, K, K, K] (out, left, right), normalised over the
    last two dims.

    Computed in log space with the log-einsum-exp trick: each child vector is shifted by its
    max, exponentiated, contracted with W, and the shifts are added back after the log.
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor, num_units: int,
                 generator: torch.Generator | None = None):
        """``left``, ``right``: [P] indices of the children in the layer's input (the values of
        its child regions, [B, C, K])."""
        k = num_units
        super().__init__((len(left), k, k, k), (-2, -1), generator)
        self.register_buffer("left", left.clone(), persistent=False)
        self.register_buffer("right", right.clone(), persistent=False)

    def forward(self, values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """``values`` [B, C, K] log-values of the child regions -> [B, P, K] log-values of the
        partitions' sums."""
        left, left_shift = exp_shifted(values.index_select(1, self.left))  # [B, P, K]
        right, right_shift = exp_shifted(values.index_select(1, self.right))
        weight = self.weights(normalise).exp()  # [P, K, K, K]
        outer = torch.einsum("bpi,bpj->pbij", left, right).flatten(2)  # [P, B, K*K]
        summed = torch.bmm(outer, weight.flatten(2).transpose(1, 2))  # [P, B, K]
        return safe_log(summed.transpose(0, 1)) + left_shift + right_shift

    def choose_children(self, batch: torch.Tensor, partition: torch.Tensor, unit: torch.Tensor,
                        values: torch.Tensor, pick: Picker) -> list[Choice]:
        """Top-down step of sampling. For N chosen (sample, partition) pairs — ``batch`` [N]
        sample indices, ``partition`` [N] indices into this layer, ``unit`` [N] the sum unit
        chosen above — pick (i, j) with probability ∝ W[p, k, i, j] L[i] R[j], the children's
        log-values taken from ``values`` [B, C, K]. Returns (sample, child index into
        ``values``, child unit) triples for the left and the right child."""
        k = self.log_weight.shape[-1]
        left_ids, right_ids = self.left[partition], self.right[partition]
        logits = (self.log_weight.detach()[partition, unit]
                  + values[batch, left_ids][:, :, None] + values[batch, right_ids][:, None, :])
        flat = pick(logits.flatten(1))
        return [(batch, left_ids, flat // k), (batch, right_ids, flat % k)]
