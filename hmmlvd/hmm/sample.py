"""Ancestral sampling of windows, unconditional or given a prefix.

Given a prefix x_1..x_L, the forward pass yields p(z_L | prefix); drawing z_L from it and then
z_{L+1}, x_{L+1}, ... forward from the model samples exactly from p(x_{L+1..T} | prefix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_id_tensor, check_int
from hmmlvd.hmm import memory

if TYPE_CHECKING:  # the HMM's verbs call this module; no runtime import of it here
    from hmmlvd.hmm.model import HMM


@torch.no_grad()
def sample(hmm: HMM, num_samples: int, prefix: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num_samples`` windows [N, T] (int64, on the model's device).

    ``prefix``: [L] (shared by all samples) or [N, L] token ids, 0 <= L <= T; the first L
    tokens of each sample are the prefix. ``generator`` must live on the model's device. Raises
    :class:`~hmmlvd.core.errors.InsufficientMemoryError` before allocating when the samples cannot
    fit (see :func:`hmmlvd.hmm.memory.check_sampling`).
    """
    num_samples = check_int(num_samples, "num_samples", 1)
    device = hmm.device
    prefix = None if prefix is None else as_id_tensor(prefix, "prefix")
    if prefix is not None and prefix.dim() not in (1, 2):
        raise DataError(f"prefix must have shape [L] or [N, L], got {tuple(prefix.shape)}")
    # before anything of size N is allocated
    memory.check_sampling(hmm.config, num_samples, device,
                          prefix_length=0 if prefix is None else prefix.shape[-1])
    out = torch.empty(num_samples, hmm.length, dtype=torch.long, device=device)
    if prefix is None or prefix.numel() == 0:
        start = 0
        state_dist = hmm.initial.expand(num_samples, -1)
    else:
        if prefix.dim() == 1:
            prefix = prefix.unsqueeze(0).expand(num_samples, -1)
        if prefix.shape[0] != num_samples:
            raise DataError(f"prefix has {prefix.shape[0]} rows but num_samples={num_samples}")
        prefix = hmm.check_windows(prefix)
        start = prefix.shape[1]
        out[:, :start] = prefix
        if start == hmm.length:
            return out
        state_dist = hmm.predictive_states(prefix)  # p(z_{L+1} | prefix)
    z = torch.multinomial(state_dist, 1, generator=generator).squeeze(1)
    for t in range(start, hmm.length):
        if t > start:
            z = torch.multinomial(hmm.transition_matrix(t - 1)[z], 1,
                                  generator=generator).squeeze(1)
        word_probs = hmm.emission_matrix(t)[z]  # [N, V]
        out[:, t] = torch.multinomial(word_probs, 1, generator=generator).squeeze(1)
    return out
