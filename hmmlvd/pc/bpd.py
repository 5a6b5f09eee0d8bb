"""Bits per dimension: the standard density-estimation metric for images,
-log2 p(x) / D averaged over images (D = pixels x channels). A model uniform over 256 grey
levels scores exactly 8; lower is better."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_int


def _check_finite(log_likelihood: torch.Tensor, offset: int = 0) -> None:
    """DataError naming the first sample (counting from ``offset``) with a NaN or infinite
    log-likelihood."""
    bad = ~torch.isfinite(log_likelihood)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise DataError(f"sample {offset + row} has log-likelihood "
                        f"{float(log_likelihood[row])}: bits per dimension need a finite "
                        "log-likelihood (probability zero? train with a pseudocount > 0)")


def bits_per_dimension(log_likelihood: torch.Tensor, num_dimensions: int) -> float:
    """Mean over the batch of -log p(x) / (D ln 2), from natural-log likelihoods [B]."""
    check_int(num_dimensions, "number of dimensions", 1)
    log_likelihood = torch.as_tensor(log_likelihood).detach()
    if log_likelihood.dim() != 1 or log_likelihood.numel() == 0:
        raise DataError(f"log-likelihoods must be a non-empty [B] vector, got shape "
                        f"{tuple(log_likelihood.shape)}")
    _check_finite(log_likelihood)
    nats = -log_likelihood.double().mean()
    return float(nats) / (num_dimensions * math.log(2))


def _total_log_likelihood(log_likelihood_fn: Callable[[torch.Tensor], torch.Tensor],
                          data: torch.Tensor | np.ndarray, batch_size: int, progress: bool,
                          require_finite: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(x) over ``data`` [N, D] as a float64 scalar, the data as a tensor),
    in batches; ``require_finite``: DataError naming the first sample with a non-finite
    log-likelihood."""
    check_int(batch_size, "batch size", 1)
    data = torch.as_tensor(data)
    if data.dim() != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise DataError(f"data must be a non-empty [N, D] array, got shape {tuple(data.shape)}")
    total = torch.zeros((), dtype=torch.float64)
    starts = range(0, len(data), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            batch = data[start:start + batch_size]
            log_likelihood = torch.as_tensor(log_likelihood_fn(batch)).detach().cpu()
            if log_likelihood.shape != (len(batch),):
                raise DataError(f"the log-likelihood function returned shape "
                                f"{tuple(log_likelihood.shape)} for a batch of {len(batch)}")
            if require_finite:
                _check_finite(log_likelihood, start)
            total += log_likelihood.double().sum()
    return total, data


def evaluate_bpd(log_likelihood_fn: Callable[[torch.Tensor], torch.Tensor],
                 data: torch.Tensor | np.ndarray, batch_size: int = 512,
                 progress: bool = False) -> float:
    """Bits per dimension of ``data`` [N, D] under a model, in batches of ``batch_size``.

    ``log_likelihood_fn`` maps a batch [B, D] (int64, on the CPU; the model moves it) to its
    natural-log likelihoods [B]; it runs without gradients."""
    total, data = _total_log_likelihood(log_likelihood_fn, data, batch_size, progress, True,
                                        "bpd")
    return float(-total) / (len(data) * data.shape[1] * math.log(2))


def mean_log_likelihood(log_likelihood_fn: Callable[[torch.Tensor], torch.Tensor],
                        data: torch.Tensor | np.ndarray, batch_size: int = 512,
                        progress: bool = False) -> float:
    """Mean over the samples of ``data`` [N, D] of log p(x) in nats (what the models'
    ``score`` returns), in batches of ``batch_size``; -inf when a sample has probability
    zero. ``log_likelihood_fn`` as in :func:`evaluate_bpd`."""
    total, data = _total_log_likelihood(log_likelihood_fn, data, batch_size, progress, False,
                                        "score")
    return float(total) / len(data)
