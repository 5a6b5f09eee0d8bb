"""Property-based robustness tests: random malformed input to the public API must
either succeed with finite, valid output or raise a library error (an ``HMMLVDError``
subclass) -- never a bare ValueError/RuntimeError/IndexError/TypeError from inside torch or
numpy, and never a NaN. Where docs/reliability.md promises a message for an input (windows,
sizes, parameters, settings, vocabularies, checkpoints), the property works out from the input
which documented error it must get and checks its class and a distinctive part of its message,
and that valid input succeeds.

Every property runs a fixed, derandomised set of examples (reproducible in CI). Tests named
``test_finding_*`` pin the minimal failing inputs the fuzzers found, each with the error (class
and message) the library now raises for it, or its success.
"""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_hmm_checkpoint
from hypothesis import HealthCheck, example, given, settings
from hypothesis import Phase as HPhase
from hypothesis import strategies as st
from library_errors import assert_error, library_call

from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.data.vocab import UNK, Vocabulary
from hmmlvd.data.windows import TokenWindows
from hmmlvd.em import Progress
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM, HMMConfig, train
from hmmlvd.hmm.em import expected_counts, maximize
from hmmlvd.hmm.model import mle_from_labels
from hmmlvd.hmm.resume import load_checkpoint

# No shrink phase: a failing property stays fast (the minimal inputs are pinned below as
# test_finding_*), and a passing run is unaffected.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                phases=[HPhase.explicit, HPhase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=25)

H, V, T = 3, 5, 4
MODELS = {hom: HMM(H, V, T, hom, seed=1) for hom in (False, True)}


def is_int_at_least(value: object, minimum: int) -> bool:
    """What validate.check_int accepts: an int (not a bool) >= ``minimum``."""
    return (not isinstance(value, bool) and isinstance(value, int | np.integer)
            and value >= minimum)


def is_step_size(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float | np.number)
            and math.isfinite(value) and 0 < value <= 1)


def is_pseudocount(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float | np.number)
            and math.isfinite(value) and 0 <= value <= 1e30)


def assert_no_nan(t: torch.Tensor) -> None:
    assert not torch.isnan(t).any(), f"NaN in output {t}"


def assert_valid_model(hmm: HMM) -> None:
    hmm.validate()
    x = torch.zeros(1, hmm.length, dtype=torch.long)
    assert not torch.isnan(hmm.log_likelihood(x)).any()


# ----- strategies: token windows in every malformed form ----------------------------------
INT_DTYPES_NP = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                 np.uint64]
OTHER_DTYPES_NP = [np.float32, np.float64, np.bool_]
TORCH_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float16,
                torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.complex64]


@st.composite
def shapes(draw, length_max: int = T + 2):
    ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 3]))
    if ndim == 0:
        return ()
    if ndim == 1:
        return (draw(st.integers(0, length_max)),)
    if ndim == 2:
        return (draw(st.integers(0, 3)), draw(st.integers(0, length_max)))
    return (draw(st.integers(0, 2)), draw(st.integers(0, length_max)), draw(st.integers(0, 2)))


@st.composite
def token_values(draw, shape, vocab_size: int = V):
    n = int(np.prod(shape)) if shape else 1
    mostly_valid = draw(st.booleans())
    if mostly_valid:
        vals = draw(st.lists(st.integers(0, vocab_size - 1), min_size=n, max_size=n))
    else:
        vals = draw(st.lists(st.integers(-3, vocab_size + 3), min_size=n, max_size=n))
    return np.array(vals, dtype=np.int64).reshape(shape)


@st.composite
def windows(draw, vocab_size: int = V, length_max: int = T + 2):
    """Token windows as numpy arrays, torch tensors or python lists, of any dtype and shape."""
    shape = draw(shapes(length_max))
    base = draw(token_values(shape, vocab_size))
    kind = draw(st.sampled_from(["numpy_int", "numpy_other", "torch", "list", "torch_noncontig"]))
    if kind == "numpy_int":
        dtype = draw(st.sampled_from(INT_DTYPES_NP))
        if np.issubdtype(dtype, np.unsignedinteger):
            base = np.abs(base)
        return base.astype(dtype)
    if kind == "numpy_other":
        dtype = draw(st.sampled_from(OTHER_DTYPES_NP))
        out = base.astype(dtype)
        if dtype != np.bool_ and out.size and draw(st.booleans()):
            out = out + 0.5
        return out
    if kind == "torch":
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        if dtype == torch.uint8:
            base = np.abs(base)
        return torch.as_tensor(base).to(dtype)
    if kind == "torch_noncontig":
        t = torch.as_tensor(base)
        return t.T if t.dim() == 2 else t
    return base.tolist()


def valid_windows(batch_max: int = 3, length: int = T, vocab_size: int = V):
    return st.integers(1, batch_max).flatmap(
        lambda b: st.lists(st.lists(st.integers(0, vocab_size - 1), min_size=length,
                                    max_size=length), min_size=b, max_size=b)
    ).map(lambda rows: torch.tensor(rows, dtype=torch.long))


def window_problem(x: object, length: int = T, vocab_size: int = V) -> str | None:
    """The documented DataError message (a distinctive part) that windows ``x`` (as drawn by
    :func:`windows`) must get from the model's check, or None for valid windows [B, <=T]."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            return "token windows must be integer ids"
        a = x.numpy()
    else:
        a = np.asarray(x)
        if isinstance(x, np.ndarray) and not np.issubdtype(a.dtype, np.integer):
            return "token windows must be integer ids"
        if isinstance(x, list) and a.size == 0:
            return "token windows must be integer ids"  # torch reads an empty list as float
    if a.ndim != 2:
        return "token windows must have shape [batch, length]"
    if a.shape[0] == 0:
        return "no windows given (batch of size 0)"
    if not 1 <= a.shape[1] <= length:
        return f"do not fit the model's length T={length}"
    if a.min() < 0 or a.max() >= vocab_size:
        return f"is outside the vocabulary [0, {vocab_size})"
    return None


# ----- HMM inference entry points ---------------------------------------------------------
@FUZZ
@given(x=windows(), homogeneous=st.booleans())
def test_log_likelihood_malformed_windows(x, homogeneous):
    hmm = MODELS[homogeneous]
    out, err = library_call(hmm.log_likelihood, x)
    problem = window_problem(x)
    if problem is not None:
        assert_error(err, DataError, problem)
        return
    assert err is None, f"valid windows {x!r} refused: {err}"
    assert out.dim() == 1
    assert torch.isfinite(out).all() and (out <= 1e-5).all(), out


@FUZZ
@given(x=windows(), homogeneous=st.booleans())
def test_next_token_distribution_malformed_prefix(x, homogeneous):
    hmm = MODELS[homogeneous]
    out, err = library_call(hmm.next_token_distribution, x)
    if err is None:
        assert out.dim() == 2 and out.shape[1] == V
        assert torch.isfinite(out).all() and (out >= 0).all()
        if out.shape[0]:
            torch.testing.assert_close(out.sum(-1), torch.ones(out.shape[0]), atol=1e-4,
                                       rtol=0)


@FUZZ
@given(x=windows(), num_samples=st.integers(1, 3), homogeneous=st.booleans())
def test_sample_malformed_prefix(x, num_samples, homogeneous):
    hmm = MODELS[homogeneous]
    gen = torch.Generator().manual_seed(0)
    out, err = library_call(hmm.sample, num_samples, prefix=x, generator=gen)
    if err is None:
        assert out.shape == (num_samples, T) and out.dtype == torch.long
        assert (out >= 0).all() and (out < V).all()


@FUZZ
@given(x=windows(), homogeneous=st.booleans())
def test_expected_counts_malformed_windows(x, homogeneous):
    hmm = MODELS[homogeneous]
    out, err = library_call(expected_counts, hmm, x)
    if err is None:
        assert math.isfinite(out.log_likelihood)
        for t in (out.initial, out.transition, out.emission_values, out.state_totals):
            assert torch.isfinite(t).all() and (t >= -1e-5).all()


@FEW
@given(num_samples=st.one_of(st.integers(-3, 3), st.floats(allow_nan=True),
                             st.booleans()))
def test_sample_bad_num_samples(num_samples):
    out, err = library_call(MODELS[False].sample, num_samples)
    if err is None:
        assert out.shape == (int(num_samples), T)


# ----- HMM construction --------------------------------------------------------------------
size_values = st.one_of(st.integers(-2, 3), st.booleans(), st.floats(-2, 3),
                        st.sampled_from([float("nan"), float("inf"), None, "2"]))


@FUZZ
@given(h=size_values, v=size_values, t=size_values, homogeneous=st.booleans())
def test_hmm_bad_sizes(h, v, t, homogeneous):
    out, err = library_call(HMM, h, v, t, homogeneous)
    bad = [(name, value) for name, value in (("num_states", h), ("vocab_size", v), ("length", t))
           if isinstance(value, bool) or not isinstance(value, int) or value < 1]
    if bad:  # checked in this order
        name, value = bad[0]
        assert_error(err, ParameterError, f"{name} must be a positive integer, got {value!r}")
        return
    assert err is None, err
    assert_valid_model(out)


def _normalised(draw, shape, axis, allow_zeros):
    elems = st.floats(0, 1) if allow_zeros else st.floats(0.01, 1)
    n = int(np.prod(shape))
    a = np.array(draw(st.lists(elems, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)
    s = a.sum(axis=axis, keepdims=True)
    a = np.where(s > 0, a / np.where(s > 0, s, 1), 0.0)
    if (s == 0).any():  # give an all-zero distribution one certain outcome
        idx = [slice(None)] * len(shape)
        idx[axis] = 0
        a[tuple(idx)] = np.where(np.take(s, 0, axis=axis) == 0, 1.0, a[tuple(idx)])
    return torch.tensor(a, dtype=torch.float32)


@st.composite
def valid_parameters(draw, allow_zeros=False):
    h, v, t = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    hom = draw(st.booleans())
    cfg = HMMConfig(h, v, t, hom)
    s = cfg.shapes()
    return (cfg, _normalised(draw, s["initial"], 0, allow_zeros),
            _normalised(draw, s["transition"], -1, allow_zeros),
            _normalised(draw, s["emission"], -2, allow_zeros))


@st.composite
def corrupted_parameters(draw):
    """(config, parameters, name of the changed one, how it was changed: None if unchanged)."""
    cfg, init, trans, emit = draw(valid_parameters())
    params = {"initial": init, "transition": trans, "emission": emit}
    name = draw(st.sampled_from(sorted(params)))
    how = draw(st.sampled_from(["nan", "inf", "negative", "scale", "shape", "dtype", "drop",
                                "numpy", "list", "3d", "empty"]))
    index, dtype = 0, None
    if how in ("nan", "inf", "negative", "scale") and params[name].numel():
        index = draw(st.integers(0, params[name].numel() - 1))
    elif how == "dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.bool,
                                      torch.complex64]))
    return corrupt(cfg, params, name, how, index, dtype)


def corrupt(cfg: HMMConfig, params: dict, name: str, how: str, index: int = 0,
            dtype: torch.dtype | None = None) -> tuple:
    """``params`` with ``params[name]`` changed ``how`` (at flat ``index``, to ``dtype``)."""
    params = dict(params)
    p = params[name]
    if how in ("nan", "inf", "negative", "scale") and not p.numel():
        how = None  # nothing to change (e.g. the transitions of a 1-token model)
    elif how in ("nan", "inf", "negative", "scale"):
        p = p.clone().flatten()
        p[index] = {"nan": float("nan"), "inf": float("inf"), "negative": -0.5,
                    "scale": p[index] * 3 + 0.1}[how]
        p = p.view(params[name].shape)
    elif how == "shape":
        p = p.unsqueeze(0).expand(2, *p.shape).clone()
    elif how == "dtype":
        p = p.to(dtype)
    elif how == "drop":
        p = None
    elif how == "numpy":
        p = p.numpy()
    elif how == "list":
        p = p.tolist()
    elif how == "3d":
        p = p.reshape(-1)[None, None]
    elif how == "empty":
        p = torch.empty(0)
    params[name] = p
    return cfg, params, name, how


#: The ParameterError (a distinctive part, after the tensor's name) each corruption must get.
CORRUPTION_MESSAGES = {"nan": "contains NaN or infinite values",
                       "inf": "contains NaN or infinite values",
                       "negative": "contains negative probabilities",
                       "scale": "distributions do not sum to 1", "shape": "has shape",
                       "empty": "has shape"}


def _corrupted(name: str, how: str) -> tuple:
    """An explicit example: a valid 2-state model's ``name`` changed ``how``."""
    hmm = HMM(2, 3, 3, seed=0)
    return corrupt(hmm.config, hmm.parameters(), name, how, index=1)


@FUZZ
@given(case=corrupted_parameters())
@example(case=_corrupted("initial", "nan"))  # every documented message, at least once
@example(case=_corrupted("transition", "inf"))
@example(case=_corrupted("emission", "negative"))
@example(case=_corrupted("transition", "scale"))
@example(case=_corrupted("emission", "shape"))
@example(case=_corrupted("initial", "empty"))
@example(case=_corrupted("transition", "drop"))
def test_hmm_corrupted_parameters(case):
    cfg, params, name, how = case
    out, err = library_call(HMM, cfg.num_states, cfg.vocab_size, cfg.length, cfg.homogeneous,
                            **params)
    expected = CORRUPTION_MESSAGES.get(how)
    if how == "3d" and tuple(params[name].shape) != cfg.shapes()[name]:
        expected = "has shape"
    if how == "drop":
        assert_error(err, ParameterError, "pass all of initial, transition and emission, or none")
    elif expected is not None:
        assert_error(err, ParameterError, f"{name} {expected}")
    elif err is not None:  # another dtype or container: converted, or refused naming the tensor
        assert_error(err, ParameterError, f"{name} ")
    else:
        assert_valid_model(out)


@FUZZ
@given(case=valid_parameters(), data=st.data())
def test_hmm_valid_parameters_finite_log_likelihood(case, data):
    cfg, init, trans, emit = case
    hmm = HMM(cfg.num_states, cfg.vocab_size, cfg.length, cfg.homogeneous,
              initial=init, transition=trans, emission=emit)
    x = data.draw(valid_windows(length=cfg.length, vocab_size=cfg.vocab_size))
    ll = hmm.log_likelihood(x)
    assert torch.isfinite(ll).all() and (ll <= 1e-5).all()
    prefix = x[:, : data.draw(st.integers(0, cfg.length - 1))]
    dist = hmm.next_token_distribution(prefix)
    torch.testing.assert_close(dist.sum(-1), torch.ones(len(x)), atol=1e-4, rtol=0)
    counts = expected_counts(hmm, x)
    assert math.isfinite(counts.log_likelihood)
    assert torch.isfinite(counts.emission_values).all()


@FUZZ
@given(case=valid_parameters(allow_zeros=True), data=st.data())
def test_sparse_parameters_never_nan(case, data):
    """Valid models with zero probabilities: an impossible window may have log p = -inf, but
    nothing may be NaN, and conditional queries and EM on it must raise the DataError that
    names the rows of probability 0, not a torch error or a non-distribution."""
    cfg, init, trans, emit = case
    hmm = HMM(cfg.num_states, cfg.vocab_size, cfg.length, cfg.homogeneous,
              initial=init, transition=trans, emission=emit)
    x = data.draw(valid_windows(length=cfg.length, vocab_size=cfg.vocab_size))
    ll = hmm.log_likelihood(x)
    assert_no_nan(ll)
    prefix = x[:, : data.draw(st.integers(0, cfg.length - 1))]
    impossible = "have probability 0 under the model"
    dist, err = library_call(hmm.next_token_distribution, prefix)
    if err is None:
        assert torch.isfinite(dist).all()
        torch.testing.assert_close(dist.sum(-1), torch.ones(len(x)), atol=1e-4, rtol=0)
    else:
        assert_error(err, DataError, f"{impossible}: there is no next-token distribution")
    gen = torch.Generator().manual_seed(0)
    out, err = library_call(hmm.sample, len(x), prefix=prefix, generator=gen)
    if err is None:
        assert (out >= 0).all() and (out < cfg.vocab_size).all()
    else:
        assert_error(err, DataError, impossible)
    counts, err = library_call(expected_counts, hmm, x)
    if err is not None:
        assert_error(err, DataError, impossible)
        assert torch.isneginf(ll).any()  # refused only because some window is impossible
    else:
        assert math.isfinite(counts.log_likelihood)
        for t in (counts.initial, counts.transition, counts.emission_values):
            assert torch.isfinite(t).all()


# ----- MLE from labels ---------------------------------------------------------------------
@st.composite
def label_arrays(draw, hi):
    n = draw(st.integers(0, 3))
    t = draw(st.sampled_from([T, T, T - 1, T + 1, 0]))
    shape = draw(st.sampled_from([(n, t), (n, t), (n * t,), (n, t, 1)]))
    vals = draw(token_values(shape, hi))
    kind = draw(st.sampled_from(["np", "torch", "float", "list", "np_uint"]))
    if kind == "torch":
        return torch.as_tensor(vals)
    if kind == "float":
        return torch.as_tensor(vals).double() + draw(st.sampled_from([0.0, 0.5]))
    if kind == "list":
        return vals.tolist()
    if kind == "np_uint":
        return np.abs(vals).astype(np.uint64)
    return vals


@FUZZ
@given(tokens=label_arrays(V), labels=label_arrays(H), homogeneous=st.booleans(),
       pseudocount=st.one_of(st.floats(-1, 1), st.just(0.0),
                             st.sampled_from([float("nan"), float("inf"), -1e-9])),
       chunk_size=st.sampled_from([65536, 1, 2, 0, -1]))
def test_mle_from_labels_malformed(tokens, labels, homogeneous, pseudocount, chunk_size):
    cfg = HMMConfig(H, V, T, homogeneous)
    out, err = library_call(mle_from_labels, tokens, labels, cfg, pseudocount=pseudocount,
                            chunk_size=chunk_size)
    if err is None:
        assert_valid_model(out)


# ----- M-step and training configuration --------------------------------------------------
bad_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.integers(-2, 2), st.sampled_from([0.0, 1.0, 1e-12, 1 + 1e-9]))


@FUZZ
@given(step_size=bad_numbers, pseudocount=bad_numbers, homogeneous=st.booleans())
def test_maximize_bad_step_and_pseudocount(step_size, pseudocount, homogeneous):
    hmm = HMM(H, V, T, homogeneous, seed=2)
    x = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 1]])
    counts = expected_counts(hmm, x)
    _, err = library_call(maximize, hmm, counts, step_size=step_size, pseudocount=pseudocount)
    if err is None:
        assert_valid_model(hmm)


epoch_values = st.one_of(st.integers(-1, 2), st.floats(-1, 2), st.just(float("nan")))


@FUZZ
@given(batch_size=st.one_of(st.integers(-2, 5), st.floats(-1, 5),
                            st.just(float("nan"))),
       epochs=epoch_values, step_size=bad_numbers, phase2_epochs=epoch_values,
       final_full_batch=epoch_values,
       pseudocount=bad_numbers, full_batch=st.booleans(),
       checkpoint_every=st.integers(-2, 2), keep_checkpoints=st.integers(-1, 2))
def test_em_config_bad_values(batch_size, epochs, step_size, phase2_epochs, final_full_batch,
                              pseudocount, full_batch, checkpoint_every, keep_checkpoints):
    cfg, err = library_call(EMConfig, epochs=epochs, step_size=step_size,
                            phase2_epochs=phase2_epochs, final_full_batch=final_full_batch,
                            batch_size=batch_size, pseudocount=pseudocount,
                            full_batch=full_batch, checkpoint_every=checkpoint_every,
                            keep_checkpoints=keep_checkpoints)
    problems = [message for message, ok in (
        ("batch size must be", is_int_at_least(batch_size, 1)),
        ("checkpoint_every must be", is_int_at_least(checkpoint_every, 0)),
        ("keep_checkpoints must be", is_int_at_least(keep_checkpoints, 1)),
        ("pseudocount", is_pseudocount(pseudocount)),
        ("epochs must be", is_int_at_least(epochs, 0)),
        ("phase2_epochs must be", is_int_at_least(phase2_epochs, 0)),
        ("final_full_batch must be", is_int_at_least(final_full_batch, 0)),
        ("step size must", is_step_size(step_size))) if not ok]
    if problems:  # refused up front, naming one of the bad values
        assert_error(err, DataError, *problems)
        return
    assert err is None, err
    hmm = HMM(2, 3, 3, seed=0)
    win = TokenWindows(np.array([0, 1, 2, 1, 0, 2, 2]), 3)
    with tempfile.TemporaryDirectory() as out:
        _, err = library_call(train, hmm, win, cfg, out=Path(out), progress=False)
    if err is None:
        assert_valid_model(hmm)


# ----- TokenWindows and Vocabulary ---------------------------------------------------------
int_or_bad = st.one_of(st.integers(-2, 8), st.floats(-1, 8), st.just(float("nan")),
                       st.booleans(), st.none())


def token_windows_problem(stream: object, length: object, max_windows: object,
                          stride: object) -> str | None:
    """The documented DataError message (a distinctive part) that TokenWindows(stream, length,
    max_windows=, stride=) must raise, checked in this order; None if all is valid."""
    try:
        a = np.asarray(stream)
    except (TypeError, ValueError, RuntimeError):
        return "token stream must be a 1-D integer array"
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        return "token stream must be a 1-D integer array"
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
        return "token ids must lie in [0, 2147483647]"
    if not is_int_at_least(length, 1):
        return "window length must be"
    if not is_int_at_least(stride, 1):
        return "window stride must be"
    if len(a) < length:
        return f"fewer than one window of {length}"
    if max_windows is not None and not is_int_at_least(max_windows, 1):
        return "max_windows"
    return None


valid_streams = st.lists(st.integers(0, 9), max_size=10).map(lambda ids: np.array(ids, np.int64))


@FUZZ
@given(stream=st.one_of(windows(vocab_size=10, length_max=8), valid_streams),
       length=int_or_bad, max_windows=int_or_bad, stride=int_or_bad, big=st.booleans())
@example(stream=np.arange(5), length=2, max_windows=0, stride=1, big=False)
@example(stream=np.arange(5), length=2, max_windows=1.5, stride=1, big=False)
@example(stream=np.arange(5), length=2, max_windows=None, stride=0, big=False)
@example(stream=np.arange(3), length=5, max_windows=None, stride=1, big=False)
@example(stream=np.arange(5), length=2, max_windows=3, stride=2, big=False)
def test_token_windows_malformed(stream, length, max_windows, stride, big):
    if big and isinstance(stream, np.ndarray) and stream.dtype == np.int64 and stream.size:
        stream = stream + 2**32  # ids beyond int32: must be refused, not wrapped
    length = 1 if length is None else length
    stride = 1 if stride is None else stride
    win, err = library_call(TokenWindows, stream, length, max_windows=max_windows,
                            stride=stride)
    problem = token_windows_problem(stream, length, max_windows, stride)
    if problem is not None:
        assert_error(err, DataError, problem)
        return
    assert err is None, err
    arr = np.asarray(stream)
    got = win.as_array()
    assert got.shape[1] == length and len(win) >= 1
    # every window is a contiguous run of the original stream, with the original values
    stream_list = arr.tolist()
    for row in got.tolist():
        assert any(stream_list[s:s + length] == row for s in range(len(stream_list))), row
    for batch in win.batches(2):
        assert batch.dtype == torch.long and batch.shape[1] == length


words = st.text(min_size=0, max_size=6)


@FUZZ
@given(vocab_words=st.lists(words, min_size=0, max_size=6),
       query=st.lists(words, max_size=6), with_unk=st.booleans())
def test_vocabulary_encode_decode_random_unicode(vocab_words, query, with_unk):
    tokens = list(dict.fromkeys(vocab_words + ([UNK] if with_unk else [])))
    vocab, err = library_call(Vocabulary, tokens)
    if err is not None:
        return
    ids, err = library_call(vocab.encode, query)
    if err is None:
        assert ids.shape == (len(query),) and ((ids >= 0) & (ids < len(vocab))).all()
        for word, i in zip(query, ids, strict=True):
            assert vocab.tokens[i] == (word if word in vocab.index else UNK)
        assert vocab.decode(ids) == [w if w in vocab.index else UNK for w in query]
    _, err = library_call(vocab.decode, [-1, len(vocab), 10**30])
    assert err is not None


@FUZZ
@given(vocab_words=st.lists(st.text(max_size=4) | st.text(st.sampled_from("ab\n\r é\x85"),
                                                           max_size=4),
                            min_size=1, max_size=5, unique=True))
def test_vocabulary_save_load_roundtrip(vocab_words):
    """Whatever Vocabulary accepts must survive save/load unchanged (or be refused up front)."""
    vocab, err = library_call(Vocabulary, vocab_words)
    if any(not w or "\n" in w or "\r" in w for w in vocab_words):  # would not survive a reload
        assert_error(err, DataError, "is not a non-empty string without line breaks")
        return
    assert err is None, err
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vocab.txt"
        _, err = library_call(vocab.save, path)
        if err is not None:
            return
        loaded, err = library_call(Vocabulary.load, path)
        assert err is None and loaded == vocab, (vocab.tokens, loaded and loaded.tokens)


# ----- checkpoints -------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10)

config_keys = ["format_version", "model_type", "num_states", "vocab_size", "length",
               "homogeneous"]


@st.composite
def config_json(draw):
    """Either any JSON value, or the real config with some fields replaced/dropped/added."""
    if draw(st.booleans()):
        return draw(json_values)
    cfg = {"format_version": 1, "model_type": "hmm", "num_states": H, "vocab_size": V,
           "length": T, "homogeneous": False}
    for key in draw(st.lists(st.sampled_from(config_keys), max_size=3)):
        if draw(st.booleans()):
            cfg[key] = draw(json_values)
        else:
            cfg.pop(key, None)
    return cfg


_SAVED = Path(tempfile.mkdtemp(prefix="hmmlvd-fuzz-"))
atexit.register(shutil.rmtree, _SAVED, ignore_errors=True)
HMM(H, V, T, False, seed=3, vocab=Vocabulary(["a", "b", "c", UNK, "é"])).save_pretrained(
    _SAVED / "model")
_FILES = sorted(p.name for p in (_SAVED / "model").iterdir())


def _load(folder: Path, *fragments: str) -> None:
    """Load ``folder``: a valid model, or a CheckpointError (containing one of ``fragments``,
    if given)."""
    out, err = library_call(HMM.from_pretrained, folder)
    if err is None and not fragments:
        assert_valid_model(out)
    else:
        assert_error(err, CheckpointError, *(fragments or ("",)))


def corruption_message(state: dict[str, str]) -> tuple[str, ...]:
    """The CheckpointError (a distinctive part) of a folder whose files are in ``state``
    ('intact', 'missing', 'truncated' or 'damaged'; read in the order config.json,
    model.safetensors, vocab.txt); () where the damage allows several messages or none."""
    if state["config.json"] == "missing":
        return ("config.json is missing",)
    if state["config.json"] != "intact":
        return ()
    if state["model.safetensors"] == "missing":
        return ("model.safetensors is missing",)
    if state["model.safetensors"] == "truncated":
        return ("model.safetensors is unreadable or truncated",)
    if state["model.safetensors"] == "intact" and state["vocab.txt"] == "missing":
        return ("vocab.txt is missing, but",)
    return ()


@FUZZ
@given(data=st.data())
def test_from_pretrained_corrupted_folder(data):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        shutil.copytree(_SAVED / "model", folder)
        state = dict.fromkeys(_FILES, "intact")
        for _ in range(data.draw(st.integers(1, 3))):
            name = data.draw(st.sampled_from(_FILES))
            path = folder / name
            how = data.draw(st.sampled_from(["truncate", "flip", "delete", "json", "dir",
                                             "garbage"]))
            if how == "delete":
                if path.exists():
                    path.unlink() if path.is_file() else shutil.rmtree(path)
                state[name] = "missing"
                continue
            if how == "dir":
                if path.is_file():
                    path.unlink()
                    path.mkdir()
                    state[name] = "missing"  # a folder where the file should be
                continue
            if not path.is_file():
                continue
            raw = bytearray(path.read_bytes())
            state[name] = ("truncated" if how == "truncate" and state[name] != "damaged"
                           else "damaged")
            if how == "truncate":
                raw = raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))]
            elif how == "flip" and raw:
                for _ in range(data.draw(st.integers(1, 4))):
                    i = data.draw(st.integers(0, len(raw) - 1))
                    raw[i] ^= 1 << data.draw(st.integers(0, 7))
            elif how == "json":
                raw = bytearray(json.dumps(data.draw(config_json())).encode())
            elif how == "garbage":
                raw = bytearray(data.draw(st.binary(max_size=64)))
            path.write_bytes(bytes(raw))
        _load(folder, *corruption_message(state))


@FEW
@given(state=json_values, latest=st.one_of(st.just("step-00000001"), st.text(max_size=8)))
def test_load_checkpoint_corrupted_train_state(state, latest):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        cfg = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=2)
        # the HMM's earlier layout: step-NNNNNNNN/train_state.json
        folder = out / "checkpoints" / "step-00000001"
        save_hmm_checkpoint(HMM(2, 3, 3, seed=0), cfg, Progress(step=1), out).rename(folder)
        (folder / "train_state.json").write_text(json.dumps(state), encoding="utf-8")
        (out / "checkpoints" / "latest").write_text(latest, encoding="utf-8")
        got, err = library_call(load_checkpoint, out)
        name = (out / "checkpoints" / "latest").read_text(encoding="utf-8").strip()
        if not re.fullmatch(r"step-[0-9]+|em-[0-9]{8,}|ckpt-[0-9]{8,}", name):
            assert_error(err, CheckpointError, "not a checkpoint folder ckpt-NNNNNNNN")
        elif name != folder.name:
            assert_error(err, CheckpointError, "has no train_state.json")
        elif err is not None:
            assert_error(err, CheckpointError, "train_state.json is damaged or not from hmmlvd")
        else:
            assert_valid_model(got[0])


# ----- pinned findings ---------------------------------------------------------------------
# Minimal inputs the fuzzers above found, each pinned with what the library does now: the
# library error it raises (class and a distinctive part of the message) or success (OK).
# Comment: input -> what escaped before the fix, and where.
def _tiny_sparse_hmm(length: int = 2) -> HMM:
    """H=1, V=2: word 1 has probability 0 everywhere, so any window containing it is
    impossible (log p = -inf)."""
    return HMM(1, 2, length, True, initial=torch.ones(1), transition=torch.ones(1, 1, 1),
               emission=torch.tensor([[[1.0], [0.0]]]))


OK = None  # the call succeeds
RECTANGULAR = (DataError, "token windows must be a rectangular array of integer ids")

FINDINGS = {
    # F1: unsigned dtypes -> NotImplementedError '"min_all" not implemented for UInt16'
    #     (model.py check_windows, `int(x.min())`).
    "F1_uint16_windows": (
        lambda: MODELS[False].log_likelihood(np.array([[0]], dtype=np.uint16)), OK),
    "F1_uint64_tensor": (
        lambda: MODELS[False].log_likelihood(torch.tensor([[0]], dtype=torch.uint64)), OK),
    # F2: torch.as_tensor in check_windows is unguarded: numpy scalar -> TypeError, ragged
    #     list -> ValueError, python int beyond int64 -> ValueError (Overflow), strings.
    "F2_numpy_scalar": (lambda: expected_counts(MODELS[False], np.uint64(0)),
                        (DataError, "token windows must have shape [batch, length], got ()")),
    "F2_ragged_list": (lambda: MODELS[False].log_likelihood([[0, 1], [1]]), RECTANGULAR),
    "F2_huge_int": (lambda: MODELS[False].log_likelihood([[2**70]]), RECTANGULAR),
    "F2_strings": (lambda: MODELS[False].log_likelihood([["a"]]), RECTANGULAR),
    # F3: 0-d prefix -> IndexError at sample.py `prefix.shape[0]`.
    "F3_sample_0d_prefix": (lambda: MODELS[False].sample(2, prefix=torch.tensor(1)),
                            (DataError, "prefix must have shape [L] or [N, L], got ()")),
    # F4: non-integer num_samples -> TypeError from torch.empty (sample.py).
    "F4_sample_float_num_samples": (lambda: MODELS[False].sample(2.0),
                                    (DataError, "num_samples must be an integer, got 2.0")),
    # F5: numpy/list parameters -> AttributeError "'numpy.ndarray' object has no attribute
    #     'to'" (model.py HMM.__init__).
    "F5_numpy_parameters": (lambda: HMM(1, 1, 1, initial=np.ones(1, np.float32),
                                        transition=np.zeros((0, 1, 1), np.float32),
                                        emission=np.ones((1, 1, 1), np.float32)), OK),
    # F7: zero-probability prefix -> RuntimeError "invalid multinomial distribution"
    #     (sample.py torch.multinomial).
    "F7_sample_impossible_prefix": (
        lambda: _tiny_sparse_hmm().sample(1, prefix=[[1]]),
        (DataError, "prefix rows [0] have probability 0 under the model")),
    # F8: python lists -> AttributeError "'list' object has no attribute 'shape'" (init.py).
    "F8_mle_lists": (lambda: mle_from_labels([[0, 1, 2, 3]], [[0, 1, 2, 0]],
                                             HMMConfig(H, V, T)), OK),
    # F8b: chunk_size=0 -> ValueError "range() arg 3 must not be zero" (init.py).
    "F8_mle_chunk_size_0": (lambda: mle_from_labels(np.zeros((1, T), np.int64),
                                                    np.zeros((1, T), np.int64),
                                                    HMMConfig(H, V, T), chunk_size=0),
                            (DataError, "chunk_size must be >= 1, got 0")),
    # F11: float epochs (nan or 1.5) were accepted -> TypeError in epoch_plan().
    "F11_phase_float_epochs": (lambda: EMConfig(epochs=1.5, final_full_batch=0).epoch_plan(),
                               (DataError, "epochs must be an integer, got 1.5")),
    # F12: float/NaN length, stride, max_windows -> TypeError (windows.py).
    "F12_windows_nan_length": (lambda: TokenWindows(np.array([0, 1, 2]), float("nan")),
                               (DataError, "window length must be an integer, got nan")),
    "F12_windows_float_stride": (
        lambda: TokenWindows(np.array([0, 1, 2]), 2, stride=1.5),
        (DataError, "window stride must be an integer, got 1.5")),
    "F12_windows_float_max": (lambda: TokenWindows(np.array([0, 1, 2]), 2, max_windows=1.5),
                              (DataError, "max_windows must be an integer, got 1.5")),
    "F12_windows_bool_max": (lambda: TokenWindows(np.array([0, 1, 2]), 2, max_windows=True),
                             (DataError, "max_windows must be an integer, got True")),
    # F12b: a bfloat16 torch stream -> TypeError "Got unsupported ScalarType BFloat16" from
    #       np.asarray (windows.py), instead of the DataError other float streams get.
    "F12_windows_bfloat16_stream": (
        lambda: TokenWindows(torch.tensor([0, 1, 2], dtype=torch.bfloat16), 2),
        (DataError, "token stream must be a 1-D integer array")),
}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_finding_raises_library_error_or_succeeds(name):
    call, expected = FINDINGS[name]
    _, err = library_call(call)
    if expected is OK:
        assert err is None, err
    else:
        assert_error(err, *expected)


def test_finding_F6_expected_counts_impossible_window_gives_nan():
    """F6: a window of probability 0 under a valid (sparse) model: expected_counts returned
    log_likelihood=-inf and all-NaN counts; maximize() then wrote NaN into every parameter
    without complaint. Now a DataError names the window, before any counts exist."""
    hmm = _tiny_sparse_hmm(1)
    with pytest.raises(DataError, match=re.escape(
            "windows [0] have probability 0 under the model, so EM cannot assign them; "
            "train with a pseudocount > 0")):
        expected_counts(hmm, torch.tensor([[1]]))
    assert_valid_model(hmm)


def test_finding_F7_next_token_distribution_impossible_prefix():
    """F7: zero-probability prefix -> an all-zero row, not a distribution (and sample raised
    a bare torch RuntimeError, see FINDINGS). Now a DataError naming the prefix row."""
    with pytest.raises(DataError, match=re.escape(
            "prefix rows [0] have probability 0 under the model: there is no next-token "
            "distribution to condition on")):
        _tiny_sparse_hmm().next_token_distribution([[1]])


def test_finding_F9_maximize_integer_step_size():
    """F9: maximize(step_size=1) (an int) -> RuntimeError 'expected dtype float for `weight`
    but got dtype long int' from emission.lerp_ (em.py; step = a * (norm > 0) is int64)."""
    hmm = HMM(H, V, T, seed=2)
    counts = expected_counts(hmm, torch.tensor([[0, 1, 2, 3]]))
    library_call(maximize, hmm, counts, step_size=1)
    assert_valid_model(hmm)


@pytest.mark.parametrize(("pseudocount", "message"), [
    (float("nan"), "pseudocount must be a finite number >= 0, got nan"),
    (float("inf"), "pseudocount must be a finite number >= 0, got inf"),
    (3.4e38, "pseudocount 3.4e+38 is too large")])
def test_finding_F10_maximize_nonfinite_pseudocount(pseudocount, message):
    """F10: maximize accepted a NaN/inf/huge pseudocount and silently left NaN or
    non-normalised parameters (em.py checked only `pseudocount < 0`). Now a DataError, with
    the model untouched."""
    hmm = HMM(H, V, T, seed=2)
    before = {k: v.clone() for k, v in hmm.parameters().items()}
    counts = expected_counts(hmm, torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(DataError, match=re.escape(message)):
        maximize(hmm, counts, pseudocount=pseudocount)
    for name, p in hmm.parameters().items():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("batch_size", [float("nan"), 2.5])
def test_finding_F11_train_config_float_batch_size(batch_size):
    """F11: EMConfig(batch_size=nan or 2.5) was accepted; training then failed with a bare
    TypeError/ValueError (float slice indices). Now TrainConfig refuses it."""
    with pytest.raises(DataError, match=re.escape(
            f"batch size must be an integer, got {batch_size}")):
        EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=batch_size)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "vocabulary is empty"), (b"a\nb\n\xff\xfe\nc\n", "vocab.txt is not valid UTF-8"),
    (b"a\nb\n", "vocabulary has 2 words but the model has vocab_size=5")],
    ids=["empty", "not_utf8", "wrong_size"])
def test_finding_F13_from_pretrained_bad_vocab_is_not_checkpoint_error(content, message):
    """F13: a truncated (empty) vocab.txt made from_pretrained raise DataError('vocabulary is
    empty'), and a vocab.txt with invalid UTF-8 (one flipped bit is enough) a bare
    UnicodeDecodeError (vocab.py Vocabulary.load): Vocabulary.load sat outside the try in
    HMM.from_pretrained. Now each is a CheckpointError naming the problem."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        shutil.copytree(_SAVED / "model", folder)
        (folder / "vocab.txt").write_bytes(content)
        _load(folder, message)


@pytest.mark.parametrize("state", ["{}", "[]", "null", "{not json", '{"train_config": 1}'])
def test_finding_F14_load_checkpoint_malformed_train_state(state):
    """F14: train.load_checkpoint parses train_state.json unguarded: {} -> KeyError,
    [] -> TypeError, null -> AttributeError, bad JSON -> JSONDecodeError (train.py)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        folder = out / "checkpoints" / "step-00000001"  # the HMM's earlier layout
        save_hmm_checkpoint(HMM(2, 3, 3, seed=0), EMConfig(batch_size=2), Progress(step=1),
                            out).rename(folder)
        (out / "checkpoints" / "latest").write_text(folder.name + "\n")
        (folder / "train_state.json").write_text(state)
        with pytest.raises(CheckpointError,
                           match=re.escape("train_state.json is damaged or not from hmmlvd: ")):
            load_checkpoint(out)


@pytest.mark.parametrize("word", ["a\nb", "a\r", "a\rb"])
def test_finding_F15_vocabulary_newline_tokens_change_on_reload(word):
    """F15: Vocabulary accepts tokens containing '\\n' or '\\r'; save() writes them raw and
    load() (text mode, universal newlines) splits them: ['a\\r', 'c'] reloads as ['a', 'c'],
    ['a\\nb', 'c'] as ['a', 'b', 'c'] -- a silently different vocabulary (and id shift).
    Now Vocabulary refuses such tokens."""
    with pytest.raises(DataError, match=re.escape(
            f"vocabulary token {word!r} is not a non-empty string without line breaks")):
        Vocabulary([word, "c"])


def test_finding_F16_token_windows_wrap_ids_beyond_int32():
    """F16: TokenWindows casts the stream to int32 with astype(copy=False): id 2**32 + 3
    silently becomes 3 (windows.py). Should raise DataError for ids outside int32."""
    with pytest.raises(DataError, match=re.escape(
            "token ids must lie in [0, 2147483647], got [1, 4294967299]")):
        TokenWindows(np.array([2**32 + 3, 1]), 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finding_F17_mle_from_labels_float_tokens_silently_truncated(dtype):
    """F17: mle_from_labels accepts float tokens/labels and truncates them (2.7 -> 2) via
    .to(torch.long) in init._chunk, while check_windows refuses float windows (the findings list
    "float windows" as bad input needing a clear error). Should raise DataError."""
    tokens = torch.tensor([[0.0, 1.0, 2.7, 3.0]], dtype=dtype)
    labels = torch.tensor([[0, 1, 2, 0]])
    with pytest.raises(DataError, match=re.escape(
            f"tokens must be integer ids, got dtype {dtype}")):
        mle_from_labels(tokens, labels, HMMConfig(H, V, T))
    with pytest.raises(DataError, match=re.escape(
            f"labels must be integer ids, got dtype {dtype}")):
        mle_from_labels(labels, tokens.round(), HMMConfig(H, V, T))
