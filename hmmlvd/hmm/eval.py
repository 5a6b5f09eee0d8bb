"""Perplexity, two definitions (always say which one a number is):

- **sliding** (the LVD paper's): the split is one stream s_1..s_N; token s_k is predicted from
  the 31 tokens before it (T-1 in general), p(s_k | ctx) = p(ctx, s_k) / p(ctx), both read off
  one forward pass over the window ending at s_k. The first T-1 tokens use the shorter prefix
  they have (all read off the first window). ppl = exp(-mean_k log p(s_k | ctx)).
- **window**: exp(-mean over windows of log p(window) / T), over all length-T windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from hmmlvd.data.windows import TokenWindows
from hmmlvd.errors import DataError
from hmmlvd.hmm.model import HMM


@dataclass
class Perplexity:
    """A perplexity and the number of tokens (sliding) or windows (window) it averages over."""

    perplexity: float
    count: int
    mean_log_prob: float


@torch.no_grad()
def sliding_token_log_probs(hmm: HMM, stream: np.ndarray, batch_size: int = 1024,
                            progress: bool = False) -> torch.Tensor:
    """log p(s_k | the up-to-(T-1) tokens before it) for every token of ``stream`` [N] -> [N]
    (float64, on the CPU)."""
    stream = np.asarray(stream)
    if stream.ndim != 1 or len(stream) == 0:
        raise DataError("stream must be a non-empty 1-D array of token ids")
    length = min(hmm.length, len(stream))
    first = hmm.run_forward(torch.as_tensor(stream[None, :length])).log_prefix[0]  # [L]
    head = torch.diff(first, prepend=first.new_zeros(1)).double().cpu()
    if len(stream) <= hmm.length:
        return head
    windows = TokenWindows(stream, hmm.length)
    tail = []
    starts = range(1, len(windows), batch_size)
    for s in tqdm(starts, desc="sliding eval", disable=not progress, unit="batch"):
        log_prefix = hmm.run_forward(windows[s:s + batch_size]).log_prefix
        tail.append((log_prefix[:, -1] - log_prefix[:, -2]).double().cpu())
    return torch.cat([head, *tail])


def sliding_perplexity(hmm: HMM, stream: np.ndarray, batch_size: int = 1024,
                       progress: bool = False) -> Perplexity:
    """The LVD paper's perplexity of a token stream (see the module docstring)."""
    log_probs = sliding_token_log_probs(hmm, stream, batch_size, progress)
    mean = log_probs.mean().item()
    return Perplexity(perplexity=math.exp(-mean), count=len(log_probs), mean_log_prob=mean)


@torch.no_grad()
def window_perplexity(hmm: HMM, windows: TokenWindows, batch_size: int = 1024,
                      progress: bool = False) -> Perplexity:
    """exp(-mean log p(window) / T) over every window of ``windows``."""
    total = 0.0
    for x in tqdm(windows.batches(batch_size), total=windows.num_batches(batch_size),
                  desc="window eval", disable=not progress, unit="batch"):
        total += hmm.log_likelihood(x).double().sum().item()
    mean = total / (len(windows) * windows.length)
    return Perplexity(perplexity=math.exp(-mean), count=len(windows), mean_log_prob=mean)
