"""Choosing one index per row of unnormalised log-probabilities: a sample or the argmax."""

from __future__ import annotations

import torch


def pick_index(logits: torch.Tensor, generator: torch.Generator | None = None,
               greedy: bool = False) -> torch.Tensor:
    """[N, M] unnormalised log-probabilities -> [N] indices: the argmax if ``greedy``, else a
    sample by the Gumbel-max trick (argmax of logits plus Gumbel noise). The noise is drawn on
    the generator's device, so a CPU generator gives the same samples on any device."""
    if greedy:
        return logits.argmax(-1)
    noise_device = generator.device if generator is not None else logits.device
    uniform = torch.rand(logits.shape, generator=generator, device=noise_device,
                         dtype=logits.dtype).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(logits.dtype).tiny)))
    return (logits + gumbel).argmax(-1)
