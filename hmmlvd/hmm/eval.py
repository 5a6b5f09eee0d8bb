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

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int
from hmmlvd.data.windows import TokenWindows
from hmmlvd.hmm.model import HMM


@dataclass
class Perplexity:
    """A perplexity and the number of tokens (sliding) or windows (window) it averages over."""

    perplexity: float
    count: int
    mean_log_prob: float


@torch.no_grad()
def sliding_token_log_probs(hmm: HMM, stream: np.ndarray, batch_size: int = 1024,
                            progress: bool = False, dtype: torch.dtype = torch.float32
                            ) -> torch.Tensor:
    """log p(s_k | the up-to-(T-1) tokens before it) for every token of ``stream`` [N] -> [N]
    (float64, on the CPU). A token of probability 0 gets -inf, and so does every token whose
    context contains one (p(ctx) = 0: the conditional is 0/0, never NaN). ``batch_size`` >= 1
    windows go through the forward pass at once, its matmuls in ``dtype`` (the log
    probabilities are accumulated in float32, then float64, either way)."""
    batch_size = check_int(batch_size, "batch_size", 1)
    stream = np.asarray(stream)
    if stream.ndim != 1 or len(stream) == 0:
        raise DataError("stream must be a non-empty 1-D array of token ids")
    length = min(hmm.length, len(stream))
    first = hmm.run_forward(torch.as_tensor(stream[None, :length]), dtype).log_prefix[0]  # [L]
    head = _conditional(first, torch.cat([first.new_zeros(1), first[:-1]])).double().cpu()
    if len(stream) <= hmm.length:
        return head
    windows = TokenWindows(stream, hmm.length)
    tail = []
    starts = range(1, len(windows), batch_size)
    for s in tqdm(starts, desc="sliding eval", disable=not progress, unit="batch"):
        log_prefix = hmm.run_forward(windows[s:s + batch_size], dtype).log_prefix
        context = log_prefix[:, -2] if hmm.length > 1 else torch.zeros_like(log_prefix[:, -1])
        tail.append(_conditional(log_prefix[:, -1], context).double().cpu())
    return torch.cat([head, *tail])


def _conditional(joint: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """log p(ctx, s) - log p(ctx), and -inf where p(ctx) = 0 (-inf - -inf would be NaN)."""
    return torch.where(torch.isneginf(context), -math.inf, joint - context)


def _exp_neg(mean: float) -> float:
    """exp(-mean), inf instead of an OverflowError."""
    return math.exp(-mean) if -mean < 709 else math.inf


def sliding_perplexity(hmm: HMM, stream: np.ndarray, batch_size: int = 1024,
                       progress: bool = False, dtype: torch.dtype = torch.float32
                       ) -> Perplexity:
    """The LVD paper's perplexity of a token stream (see the module docstring); ``dtype``:
    of the forward's matmuls (see :func:`sliding_token_log_probs`)."""
    log_probs = sliding_token_log_probs(hmm, stream, batch_size, progress, dtype)
    mean = log_probs.mean().item()
    return Perplexity(perplexity=_exp_neg(mean), count=len(log_probs), mean_log_prob=mean)


@torch.no_grad()
def window_perplexity(hmm: HMM, windows: TokenWindows, batch_size: int = 1024,
                      progress: bool = False) -> Perplexity:
    """exp(-mean log p(window) / T) over every window of ``windows``, ``batch_size`` >= 1
    windows at a time."""
    batch_size = check_int(batch_size, "batch_size", 1)
    total = 0.0
    for x in tqdm(windows.batches(batch_size), total=windows.num_batches(batch_size),
                  desc="window eval", disable=not progress, unit="batch"):
        total += hmm.log_likelihood(x).double().sum().item()
    mean = total / (len(windows) * windows.length)
    return Perplexity(perplexity=_exp_neg(mean), count=len(windows), mean_log_prob=mean)
