"""The HMM's memory model: the bytes an HMM and EM training on a batch need, checked against
what the device has (:mod:`hmmlvd.core.memory`) *before* anything large is allocated, so that an
absurd H or batch fails at once with a message saying how much is needed and which flag to
change, instead of the process being killed after the data and encoder have been loaded.

Estimates (parameters are float32; H states, V words, T positions, B windows a batch;
P_A = T-1 or 1 transition matrices, P_B = T or 1 emission tables):

- **parameters**: ``4 (H + P_A H^2 + P_B V H)`` bytes, exact. Random initialisation and
  loading a checkpoint need just these.
- **MLE from labels**: + the float64 transition counts ``8 P_A H^2`` (normalised in place)
  + about 48 bytes of index temporaries per token of a chunk of windows.
- **one EM step on B windows**, computed in chunks of C windows (:func:`chunk_windows`):
  + per chunk ``C T (d_c H + 64)`` bytes: the gathered emissions (float32, plus their copy in
  the compute dtype), the two [C, H] tensors each forward step saves for the backward pass and
  their gradients (in the compute dtype, 4 or 2 bytes each), plus int64 indices; so
  ``d_c = 20`` in float32 and ``14`` in bfloat16 (``4 + 5 * 2``);
  + for mini-batch EM ``8 B T H``: the batch's float32 emission counts and the M-step's
  weighted copy of them; for full-batch EM the float32 counts of one chunk ``4 C T H``, a
  parameter-sized count accumulator, and no table-sized temporary (its M-step runs in place);
  + the transition work ``4 (T-1) H^2 c`` (autograd holds a gradient per step before summing
  them, then the counts and the M-step's normaliser: c = 3 non-homogeneous, 2 homogeneous).
  Without chunking (C = B) in float32 that is the ``4 B T (7 H + 16)`` fitted originally.
  A run with both kinds of epochs needs the larger of the two.

The constants were fitted to the peak resident memory (VmHWM) of one EM step on the CPU at
H = 64..1536, V = 100..50,000, B = 16..16,384, T = 32; the estimate of the total lies within
about 1.5x of the measured peak (``tests/test_memory.py`` re-measures one size). On CUDA the
same tensors are allocated (through the caching allocator), so the same estimate is used.

Set ``HMMLVD_SKIP_MEMORY_CHECK=1`` to skip the checks (e.g. when swap or unified memory is
meant to absorb the difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmmlvd.core import memory as device_memory
from hmmlvd.core.errors import InsufficientMemoryError
from hmmlvd.core.memory import FLOAT32, SKIP_ENV, format_bytes
from hmmlvd.hmm.config import HMMConfig

# Fitted constants (see the module docstring).
ACTIVATION_FLOATS_PER_STATE = 7  # [B, T, H]-sized float32 tensors at the peak, unchunked
CHUNK_BYTES_PER_STATE = {torch.float32: 20, torch.bfloat16: 14}  # per chunk token and state
BATCH_COUNT_BYTES_PER_STATE = 8  # mini-batch: emission counts + their weighted copy
INDEX_BYTES_PER_TOKEN = 64  # int64 token/row indices and [B, T] scalars per token
TRANSITION_COPIES = {False: 3, True: 2}  # [T-1, H, H]-sized tensors at the peak
MLE_INDEX_BYTES_PER_TOKEN = 48
#: float32 counts are exact integers only up to 2**24 (adding 1 to 2**24 gives 2**24)
FLOAT32_EXACT_COUNTS = 2 ** 24
SAMPLE_BYTES_PER_ENTRY = 10  # per [N, H] and [N, V] entry of one sampling step: 2.5 float32
PREFIX_BYTES_PER_STATE = 10  # per [N, L, H] entry of the prefix's forward pass (no backward)


#: Windows per E-step chunk are chosen so that a chunk holds at most this many [window,
#: position, state] entries (2^26: 16,384 windows at H = 128, T = 32; 2,048 at H = 1024): the
#: activations of a chunk stay near 1.3 GB in float32 whatever the batch size.
CHUNK_ENTRIES = 2**26


def chunk_windows(num_states: int, length: int) -> int:
    """Windows per E-step chunk for H = ``num_states`` and T = ``length`` (at least 1)."""
    return max(1, CHUNK_ENTRIES // max(num_states * length, 1))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed, in three parts: ``parameters`` (the model itself), ``counts`` (count
    tables and their temporaries) and ``activations`` (per-batch or per-chunk tensors)."""

    parameters: int
    counts: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.counts + self.activations


def parameter_bytes(config: HMMConfig) -> int:
    """Exact size of the float32 parameters: initial [H], transition [P_A, H, H], emission
    [P_B, V, H]."""
    h, v = config.num_states, config.vocab_size
    return FLOAT32 * (h + config.transition_positions * h * h
                      + config.emission_positions * v * h)


def mle_emission_count_dtype(config: HMMConfig, num_windows: int) -> torch.dtype:
    """The dtype in which :func:`~hmmlvd.hmm.init.mle_parameters` counts emissions of
    ``num_windows`` windows: float32 (normalised in place into the parameters) while no cell
    [position, word, state] can reach 2**24, i.e. N windows per emission position (N·T when
    one position pools all T), else int32 (int64 from 2**31), which is converted at the end."""
    per_cell = max(num_windows, 0) * config.length // config.emission_positions
    if per_cell < FLOAT32_EXACT_COUNTS:
        return torch.float32
    return torch.int32 if per_cell < 2 ** 31 else torch.int64


def model_estimate(config: HMMConfig, method: str = "random", num_windows: int = 0,
                   chunk_size: int = 65536) -> MemoryEstimate:
    """Peak bytes to create a model: ``random`` (seeded random initialisation), ``load`` (from a
    checkpoint) or ``mle`` (closed form from ``num_windows`` labelled windows read in chunks of
    ``chunk_size``)."""
    params = parameter_bytes(config)
    if method in ("random", "load"):
        return MemoryEstimate(params)
    if method != "mle":
        raise ValueError(f"unknown method {method!r}")
    h = config.num_states
    counts = 8 * (h + config.transition_positions * h * h)  # float64 counts
    count_dtype = mle_emission_count_dtype(config, num_windows)
    if count_dtype != torch.float32:  # integer counts beside the float32 emission they become
        counts += count_dtype.itemsize * config.emission_positions * config.vocab_size * h
    tokens = min(max(num_windows, 0), chunk_size) * config.length
    return MemoryEstimate(params, counts, MLE_INDEX_BYTES_PER_TOKEN * tokens)


def training_estimate(config: HMMConfig, batch_size: int, full_batch: bool = False,
                      dtype: torch.dtype = torch.float32, mini_batch: bool | None = None
                      ) -> MemoryEstimate:
    """Peak bytes of EM on batches of ``batch_size`` windows in compute ``dtype``: parameters,
    count tables and temporaries, and the forward/backward activations of one chunk (see the
    module docstring). ``full_batch``: some epochs are full-batch; ``mini_batch``: some are
    mini-batch (default: ``not full_batch``); the peak is that of the larger kind."""
    h, length = config.num_states, config.length
    mini_batch = not full_batch if mini_batch is None else mini_batch
    params = parameter_bytes(config)
    transitions = FLOAT32 * max(length - 1, 0) * h * h * TRANSITION_COPIES[bool(config.homogeneous)]
    chunk_tokens = min(batch_size, chunk_windows(h, length)) * length
    per_chunk = chunk_tokens * (CHUNK_BYTES_PER_STATE.get(dtype, 20) * h + INDEX_BYTES_PER_TOKEN)
    kinds = []
    if mini_batch or not full_batch:
        batch_counts = batch_size * length * BATCH_COUNT_BYTES_PER_STATE * h
        kinds.append((transitions, per_chunk + batch_counts))
    if full_batch:  # CountAccumulator (parameter-sized) + one chunk's float32 counts
        kinds.append((transitions + params, per_chunk + chunk_tokens * FLOAT32 * h))
    counts, activations = max(kinds, key=sum)
    return MemoryEstimate(params, counts, activations)


def sampling_estimate(config: HMMConfig, num_samples: int, prefix_length: int = 0
                      ) -> MemoryEstimate:
    """Peak bytes of drawing ``num_samples`` windows: the parameters, and as activations the
    int64 output [N, T], one step's state and word distributions [N, H], [N, V] (gathered rows
    and the copies ``torch.multinomial`` makes: 10 bytes an entry) and the forward pass over a
    prefix of L = ``prefix_length`` tokens: its gathered emissions [N, L, H] and the per-step
    temporaries, 10 bytes an entry (no activations are kept for a backward pass), plus 64
    bytes of indices a token. Fitted to the peak resident memory at H = 128..2048,
    V = 50..20,000, N = 500..2,000, L = 0..31: within 1.0-2.2x of the measured peak."""
    h, v = config.num_states, config.vocab_size
    per_sample = (8 * config.length + SAMPLE_BYTES_PER_ENTRY * (h + v)
                  + prefix_length * (PREFIX_BYTES_PER_STATE * h + INDEX_BYTES_PER_TOKEN))
    return MemoryEstimate(parameter_bytes(config), 0, num_samples * per_sample)


# ----- checks -------------------------------------------------------------------------------
def _sizes(config: HMMConfig) -> str:
    hom = ", homogeneous" if config.homogeneous else ""
    return f"H={config.num_states}, V={config.vocab_size}, T={config.length}{hom}"


def _label(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device)


def _fail(message: str, device: torch.device, batch: bool,
          dtype: torch.dtype | None = None, first: str = "") -> None:
    """Raise the refusal: ``message``, then the fixes (``first``, when given, leads them)."""
    other = "--device cuda" if device.type == "cpu" else "--device cpu"
    fixes = first + ("fewer hidden states (--hidden-states), a smaller batch (--batch-size), "
                     if batch else "fewer hidden states (--hidden-states) or ")
    if batch and dtype == torch.float32:
        fixes += "bfloat16 activations (--dtype bfloat16), "
    if batch:
        fixes += "or "
    raise InsufficientMemoryError(f"{message}. Use {fixes}{other} (or set {SKIP_ENV}=1 to skip "
                                  "this check)")


def check_model(config: HMMConfig, device: str | torch.device = "cpu", method: str = "random",
                **kwargs: int) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` if creating the model by ``method`` (see
    :func:`model_estimate`) needs more memory than ``device`` has available."""
    estimate = model_estimate(config, method, **kwargs)
    device = torch.device(device)
    if device_memory.skipped():
        return estimate
    available = device_memory.available_bytes(device)
    if available is not None and estimate.total > available:
        what = {"random": "random initialisation", "load": "loading",
                "mle": "MLE from labels"}[method]
        _fail(f"{_sizes(config)} needs about {format_bytes(estimate.total)} for its parameters "
              f"({what}; the parameters alone are {format_bytes(estimate.parameters)}); this "
              f"{_label(device)} has {format_bytes(available)} available", device, batch=False)
    return estimate


def check_training(config: HMMConfig, batch_size: int, device: str | torch.device = "cpu",
                   full_batch: bool = False, allocated: bool = False,
                   dtype: torch.dtype = torch.float32, mini_batch: bool | None = None
                   ) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` if EM on batches of ``batch_size`` windows in
    compute ``dtype`` needs more memory than ``device`` has available. ``allocated``: the
    parameters already exist on the device (so only the rest has to fit into what is still
    available). ``full_batch`` / ``mini_batch``: see :func:`training_estimate`. When the
    full-batch epochs' parameter-sized count sums are what does not fit (mini-batch epochs
    alone would), the message offers dropping them first."""
    estimate = training_estimate(config, batch_size, full_batch, dtype, mini_batch)
    device = torch.device(device)
    if device_memory.skipped():
        return estimate
    available = device_memory.available_bytes(device)

    def needed(e: MemoryEstimate) -> int:  # what must still fit besides loaded parameters
        return e.total - (e.parameters if allocated else 0)

    if available is not None and needed(estimate) > available:
        mode = ", full-batch EM" if full_batch else ""
        has = (f"besides the {format_bytes(estimate.parameters)} of parameters already loaded, "
               f"this {_label(device)} has {format_bytes(available)} available" if allocated
               else f"this {_label(device)} has {format_bytes(available)} available")
        mini_only = full_batch and needed(
            training_estimate(config, batch_size, False, dtype, True)) <= available
        first = "mini-batch epochs only (--final-full-batch 0), " if mini_only else ""
        _fail(f"{_sizes(config)} needs about {format_bytes(estimate.total)} for parameters and "
              f"EM counts (batch {batch_size}{mode}); {has}", device, batch=True, dtype=dtype,
              first=first)
    return estimate


def describe(estimate: MemoryEstimate, dtype: torch.dtype) -> str:
    """One line for the log: the estimated peak and its parts."""
    return (f"memory: about {format_bytes(estimate.total)} at the peak (parameters "
            f"{format_bytes(estimate.parameters)}, counts {format_bytes(estimate.counts)}, "
            f"activations {format_bytes(estimate.activations)}; E-step in "
            f"{str(dtype).removeprefix('torch.')})")


def check_sampling(config: HMMConfig, num_samples: int, device: str | torch.device = "cpu",
                   prefix_length: int = 0) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` if drawing ``num_samples`` windows (see
    :func:`sampling_estimate`) needs more memory than ``device`` has available besides the
    model's parameters, which exist already."""
    estimate = sampling_estimate(config, num_samples, prefix_length)
    device = torch.device(device)
    if device_memory.skipped():
        return estimate
    available = device_memory.available_bytes(device)
    if available is not None and estimate.activations > available:
        raise InsufficientMemoryError(
            f"drawing {num_samples:,} samples from {_sizes(config)} needs about "
            f"{format_bytes(estimate.activations)} besides the parameters; this "
            f"{_label(device)} has {format_bytes(available)} available. Ask for fewer samples "
            f"(or set {SKIP_ENV}=1 to skip this check)")
    return estimate


