"""The mixing layer: regions with several partitions mix their partitions' K-vectors
element-wise, ``S[k] = sum_p w[k, p] * partition_p[k]`` (EiNet's mixing layer)."""

from __future__ import annotations

import torch

from hmmlvd.pc.layers.sum_layer import Picker, SumLayer
from hmmlvd.pc.logspace import log_sum_exp
from hmmlvd.pc.rows import RowReader


class MixingLayer(SumLayer):
    """R regions, region r mixing the partitions ``slots[r, :count_r]`` of its layer;
    ``log_weight`` is [R, K, P_max], normalised over the last dim, -inf in padded slots."""

    def __init__(self, slots: torch.Tensor, valid: torch.Tensor, num_units: int,
                 generator: torch.Generator | None = None, num_inputs: int | None = None):
        """``slots`` [R, P_max]: indices into the layer's ``num_inputs`` partition outputs
        (default the largest slot + 1; anything where ``valid`` [R, P_max] is False)."""
        r, p_max = slots.shape
        mask = valid[:, None, :].expand(r, num_units, p_max)
        super().__init__((r, num_units, p_max), (-1,), generator, valid=mask)
        self.register_buffer("slots", slots.clone(), persistent=False)
        # padded slots read partition 0; their weights are 0, so they add nothing
        if num_inputs is None:
            num_inputs = int(slots.max()) + 1 if slots.numel() else 0
        self.reader = RowReader(slots.flatten(), num_inputs)

    def forward(self, partition_values: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """[P, B, K] log-values of the layer's partitions (region-major) -> [R, B, K] of the
        mixed regions."""
        gathered = self.reader(partition_values)[0].view(
            *self.slots.shape, *partition_values.shape[1:])  # [R, P_max, B, K]
        weight = self.weights(normalise).transpose(1, 2)[:, :, None, :]  # [R, P_max, 1, K]
        return log_sum_exp(gathered + weight, dim=1)

    def choose_partition(self, batch: torch.Tensor, region: torch.Tensor, unit: torch.Tensor,
                         partition_values: torch.Tensor, pick: Picker) -> torch.Tensor:
        """For N (sample, mixed region, unit) triples, pick a partition with probability
        ∝ w[k, p] * partition_p[k]; returns [N] indices into the layer's partitions."""
        slots = self.slots[region]  # [N, P_max]
        logits = (self.log_weight.detach()[region, unit]
                  + partition_values[batch[:, None], slots, unit[:, None]])
        choice = pick(logits)
        return slots.gather(1, choice[:, None]).squeeze(1)
