"""Initial parameters: random (seeded), or closed-form MLE from tokens paired with hidden-state
labels (the initialiser that latent variable distillation feeds)."""

from __future__ import annotations

import numpy as np
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_id_tensor, check_int, check_integer_dtype, check_pseudocount
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.memory import check_model, mle_emission_count_dtype


def random_parameters(config: HMMConfig, seed: int = 0, device: str | torch.device = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform(0, 1) draws normalised into distributions, as hmmlearn initialises:
    (initial [H], transition [P_A, H, H], emission [P_B, V, H]). Raises
    :class:`~hmmlvd.core.errors.InsufficientMemoryError` first if they cannot fit on ``device``."""
    check_model(config, device, "random")
    # drawn on the CPU whatever torch's default device: the same seed gives the same model
    # on every device
    gen = torch.Generator().manual_seed(seed)
    shapes = config.shapes()
    initial = torch.rand(shapes["initial"], generator=gen, device="cpu")
    transition = torch.rand(shapes["transition"], generator=gen, device="cpu")
    emission = torch.rand(shapes["emission"], generator=gen, device="cpu")
    initial /= initial.sum()
    transition /= transition.sum(-1, keepdim=True)
    emission /= emission.sum(-2, keepdim=True)
    return initial.to(device), transition.to(device), emission.to(device)


def mle_parameters(tokens: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                   config: HMMConfig, pseudocount: float = 1e-3, chunk_size: int = 65536,
                   device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form maximum-likelihood parameters (initial [H], transition [P_A, H, H],
    emission [P_B, V, H]) from windows x [N, T] and their labels z [N, T]
    (:func:`hmmlvd.hmm.model.mle_from_labels` makes the HMM):

    initial[h] ∝ #(z_1 = h) + c,   transition[t, i, j] ∝ #(z_t = i, z_{t+1} = j) + c,
    emission[t, w, h] ∝ #(z_t = h, x_t = w) + c    (c = ``pseudocount``, counts per position;
    a homogeneous model pools all positions; emission counts are float32 while no cell can reach
    2**24, where float32 stops counting by ones, else integers:
    :func:`~hmmlvd.hmm.memory.mle_emission_count_dtype`). Both arrays may be memory-mapped;
    they are read in chunks of ``chunk_size`` windows. Raises
    :class:`~hmmlvd.core.errors.InsufficientMemoryError` before counting if the counts and the
    model cannot fit on ``device``.
    """
    h, v, length = config.num_states, config.vocab_size, config.length
    tokens, labels = _id_array(tokens, "tokens"), _id_array(labels, "labels")
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    pseudocount = check_pseudocount(pseudocount, v)
    if tokens.shape != labels.shape or len(tokens.shape) != 2:
        raise DataError(f"tokens {tuple(tokens.shape)} and labels {tuple(labels.shape)} must "
                        f"both have shape [N, T]")
    if tokens.shape[0] == 0:
        raise DataError("no labelled windows to count")
    if tokens.shape[1] != length:
        raise DataError(f"windows have length {tokens.shape[1]}, the model needs T={length}")
    check_model(config, device, "mle", num_windows=tokens.shape[0], chunk_size=chunk_size)
    pa, pb = config.transition_positions, config.emission_positions
    init_c = torch.zeros(h, dtype=torch.float64, device=device)
    trans_c = torch.zeros(pa * h * h, dtype=torch.float64, device=device)
    # float32 counts are exact below 2**24 per cell; more windows than that count in integers
    emit_c = torch.zeros(pb * v * h, dtype=mle_emission_count_dtype(config, tokens.shape[0]),
                         device=device)
    step_pos = torch.zeros(length - 1, dtype=torch.long, device=device) if config.homogeneous \
        else torch.arange(length - 1, device=device)
    emit_pos = torch.zeros(length, dtype=torch.long, device=device) if config.homogeneous \
        else torch.arange(length, device=device)
    for start in range(0, tokens.shape[0], chunk_size):
        x = _chunk(tokens, start, chunk_size, device)
        z = _chunk(labels, start, chunk_size, device)
        if x.min() < 0 or x.max() >= v:
            raise DataError(f"token ids must lie in [0, {v})")
        if z.min() < 0 or z.max() >= h:
            raise DataError(f"labels must lie in [0, {h})")
        init_c += torch.bincount(z[:, 0], minlength=h)
        trans_idx = ((step_pos * h + z[:, :-1]) * h + z[:, 1:]).flatten()
        trans_c.index_add_(0, trans_idx, torch.ones_like(trans_idx, dtype=trans_c.dtype))
        emit_idx = ((emit_pos * v + x) * h + z).flatten()
        emit_c.index_add_(0, emit_idx, torch.ones_like(emit_idx, dtype=emit_c.dtype))
    if pseudocount == 0 and (init_c.sum() == 0 or (trans_c.view(pa, h, h).sum(-1) == 0).any()
                             or (emit_c.view(pb, v, h).sum(1) == 0).any()):
        raise DataError("some hidden state never occurs in the labels (at some position); with "
                        "pseudocount 0 its distributions are undefined: use pseudocount > 0")
    # normalised in place: the float64 transition counts are the largest temporary
    initial = init_c.add_(pseudocount)
    transition = trans_c.view(pa, h, h).add_(pseudocount)
    emission = emit_c.view(pb, v, h)
    if emission.dtype != torch.float32:
        emission, emit_c = emission.float(), None  # the integer counts are freed here
    emission = emission.add_(pseudocount)
    return (initial.div_(initial.sum()).float(),
            transition.div_(transition.sum(-1, keepdim=True)).float(),
            emission.div_(emission.sum(-2, keepdim=True)))


def _id_array(array: object, what: str) -> torch.Tensor | np.ndarray:
    """Integer tensors and arrays pass as they are (memory maps stay on disk); anything else
    becomes an int64 tensor; floats and bools are refused."""
    if isinstance(array, torch.Tensor | np.ndarray):
        check_integer_dtype(array, what)
        return array
    return as_id_tensor(array, what)


def _chunk(array: torch.Tensor | np.ndarray, start: int, size: int,
           device: str | torch.device) -> torch.Tensor:
    """Rows [start, start+size) of a tensor or (memory-mapped) array as int64 on ``device``."""
    rows = array[start:start + size]
    if isinstance(rows, torch.Tensor):
        return rows.to(device, torch.long)
    return torch.from_numpy(np.array(rows, dtype=np.int64)).to(device)
