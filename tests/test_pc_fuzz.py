"""Errors of the PC module: malformed data, masks, settings and training arguments must either
work with finite, valid output or raise a library error (DataError / ParameterError) -- never a
bare torch/numpy error and never a NaN. Property tests run a fixed, derandomised set of
examples (the settings of tests/test_fuzz_public_api.py); where docs/reliability.md promises a
message, they work out from the input which error it must get and check its class and a
distinctive part of its message (and that valid input succeeds). The plain tests pin each
error with its message."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import Phase as HPhase
from hypothesis import strategies as st
from library_errors import assert_error, library_call
from test_pc_circuit import kary_graph, padded_graph, peak_

from hmmlvd.core.errors import DataError, HMMLVDError, ParameterError
from hmmlvd.pc import (
    Circuit,
    Partition,
    RegionGraph,
    em_step,
    fit_adam,
    fit_em,
    hclt_region_graph,
    inpaint,
    log_conditional,
    log_marginal,
    poon_domingos,
    random_binary_trees,
    sample,
)
from hmmlvd.pc.structures import chain_region_graph

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                phases=[HPhase.explicit, HPhase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=20)

C = 3
CIRCUITS = {
    "categorical": peak_(Circuit(poon_domingos(2, 2, 1), 2, input="categorical",
                                 num_categories=C, product="einsum", seed=1), seed=2),
    "bernoulli": peak_(Circuit(kary_graph(), 2, input="bernoulli", product="hadamard", seed=3),
                       seed=4),
    "gaussian": peak_(Circuit(random_binary_trees(4, 2, 2, seed=0), 2, input="gaussian",
                              max_var=0.1, seed=5), seed=6),
}
D = 4
KINDS = sorted(CIRCUITS)


def is_int_at_least(value: object, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def assert_valid_log_likelihood(out: torch.Tensor, batch: int, kind: str) -> None:
    assert out.shape == (batch,)
    assert not torch.isnan(out).any(), out
    if kind != "gaussian":  # probabilities: log p <= 0, and every parameter is positive
        assert torch.isfinite(out).all() and (out <= 1e-5).all(), out


# ----------------------------------------------------------------------------- strategies
TORCH_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float16,
                torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.complex64]
NP_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.float32, np.float64,
             np.bool_]


@st.composite
def data_arrays(draw, width: int = D):
    """Data in every malformed form: any rank, width, dtype, container; out-of-range ints,
    NaN and inf."""
    ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 2, 3]))
    rows = draw(st.integers(0, 3))
    cols = draw(st.sampled_from([width, width, width, width - 1, width + 1, 0]))
    shape = {0: (), 1: (cols,), 2: (rows, cols), 3: (rows, cols, 1)}[ndim]
    n = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.one_of(st.integers(-2, C + 2), st.integers(0, C - 1),
                                     st.floats(-1, 2), st.sampled_from([math.nan, math.inf])),
                           min_size=n, max_size=n))
    array = np.array(values, dtype=np.float64).reshape(shape)
    if draw(st.booleans()):  # mostly whole numbers
        array = np.nan_to_num(np.round(array), nan=0.0, posinf=1.0)
    kind = draw(st.sampled_from(["torch", "numpy", "list"]))
    if kind == "torch":
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        clean = np.nan_to_num(array, nan=0.0, posinf=1.0) if not dtype.is_floating_point \
            else array
        if dtype == torch.uint8:
            clean = np.abs(clean)
        return torch.as_tensor(clean).to(dtype)
    if kind == "numpy":
        dtype = draw(st.sampled_from(NP_DTYPES))
        clean = array if np.issubdtype(dtype, np.floating) else np.nan_to_num(
            array, nan=0.0, posinf=1.0)
        if np.issubdtype(dtype, np.unsignedinteger):
            clean = np.abs(clean)
        return clean.astype(dtype)
    return array.tolist()


def valid_data(kind: str, batch: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.rand(batch, D, generator=gen)
    return torch.randint(0, 2 if kind == "bernoulli" else C, (batch, D), generator=gen)


@st.composite
def masks(draw, shape=(3, D)):
    """Missing masks: right or wrong shape and dtype, numpy / torch / list."""
    how = draw(st.sampled_from(["ok", "ok", "shape", "dtype", "numpy", "list", "1d", "none"]))
    n = int(np.prod(shape))
    bits = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)
    if how == "none":
        return None
    if how == "shape":
        return torch.as_tensor(np.concatenate([bits, bits[:1]]))
    if how == "dtype":
        return torch.as_tensor(bits).to(draw(st.sampled_from([torch.uint8, torch.int64,
                                                              torch.float32])))
    if how == "numpy":
        return bits
    if how == "list":
        return bits.tolist()
    if how == "1d":
        return torch.as_tensor(bits[0])
    return torch.as_tensor(bits)


bad_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2),
                        st.booleans(), st.sampled_from([0.0, 1.0, 1e-12, 1 + 1e-9, None, "1"]))


# ----------------------------------------------------------------------------- properties


def data_problem(x: object, kind: str) -> str | None:
    """The documented DataError message (a distinctive part) that data ``x`` (as drawn by
    :func:`data_arrays`: always rectangular) must get from a ``kind`` circuit; None if valid."""
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[1] != D:
        return f"data must have shape [batch, {D}], got {tuple(t.shape)}"
    if t.shape[0] == 0:
        return "data: the batch is empty (0 samples)"
    if kind == "gaussian":
        if t.dtype.is_complex or t.dtype == torch.bool:
            return f"data must be real numbers, got dtype {t.dtype}"
        if not torch.isfinite(t.to(torch.get_default_dtype())).all():
            return "data has a non-finite value at sample"
        return None
    if t.dtype.is_floating_point or t.dtype.is_complex or (
            t.dtype == torch.bool and kind != "bernoulli"):
        return f"categorical data must be integers, got dtype {t.dtype}"
    top = 1 if kind == "bernoulli" else C - 1
    if ((t.long() < 0) | (t.long() > top)).any():
        return f"is out of range 0..{top}"
    return None


@FUZZ
@given(x=data_arrays(), kind=st.sampled_from(KINDS))
def test_log_likelihood_malformed_data(x, kind):
    circuit = CIRCUITS[kind]
    out, err = library_call(circuit.log_likelihood, x)
    problem = data_problem(x, kind)
    if problem is not None:
        assert_error(err, DataError, problem)
        return
    assert err is None, err
    assert_valid_log_likelihood(out, len(x), kind)


@FUZZ
@given(missing=masks(), kind=st.sampled_from(KINDS))
def test_log_likelihood_malformed_missing(missing, kind):
    circuit = CIRCUITS[kind]
    x = valid_data(kind)
    out, err = library_call(circuit.log_likelihood, x, missing)
    if missing is not None:
        mask = torch.as_tensor(np.asarray(missing))
        if mask.dtype != torch.bool or mask.shape != x.shape:
            assert_error(err, DataError, f"missing must be a bool mask of shape {tuple(x.shape)}"
                                         f", got {mask.dtype} {tuple(mask.shape)}")
            return
    assert err is None, err
    assert_valid_log_likelihood(out, 3, kind)
    if missing is not None:
        full = torch.as_tensor(np.asarray(missing, dtype=bool))
        torch.testing.assert_close(out, circuit.log_likelihood(x, full))


@FUZZ
@given(x=data_arrays(), missing=masks(), kind=st.sampled_from(KINDS), seed=st.integers(0, 3),
       greedy=st.booleans())
def test_inpaint_malformed(x, missing, kind, seed, greedy):
    circuit = CIRCUITS[kind]
    out, err = library_call(inpaint, circuit, x, missing, seed=seed, greedy=greedy)
    if err is None:
        x = torch.as_tensor(x)
        keep = ~torch.as_tensor(np.asarray(missing, dtype=bool))
        assert out.shape == x.shape and not torch.isnan(out).any()
        assert torch.equal(out[keep], x.to(out.dtype)[keep])
        if kind != "gaussian":
            assert int(out.min()) >= 0 and int(out.max()) < (2 if kind == "bernoulli" else C)


@FUZZ
@given(x=data_arrays(), kind=st.sampled_from(KINDS), step_size=bad_numbers,
       pseudocount=bad_numbers)
def test_em_step_malformed(x, kind, step_size, pseudocount):
    circuit = copy.deepcopy(CIRCUITS[kind])
    out, err = library_call(em_step, circuit, x, step_size=step_size, pseudocount=pseudocount)
    if err is None:
        assert math.isfinite(out)
        circuit.check_parameters()
        assert_valid_log_likelihood(circuit.log_likelihood(valid_data(kind)), 3, kind)


@FEW
@given(kind=st.sampled_from(KINDS), epochs=bad_numbers, batch_size=bad_numbers,
       step_size=bad_numbers, pseudocount=bad_numbers, full_batch=st.booleans(),
       missing=masks(shape=(5, D)))
def test_fit_em_malformed_arguments(kind, epochs, batch_size, step_size, pseudocount,
                                    full_batch, missing):
    circuit = copy.deepcopy(CIRCUITS[kind])
    x = valid_data(kind, batch=5, seed=1)
    out, err = library_call(fit_em, circuit, x, epochs=epochs, batch_size=batch_size,
                            step_size=step_size, pseudocount=pseudocount,
                            full_batch=full_batch, missing=missing, progress=False)
    if err is None:
        assert all(math.isfinite(h) for h in out)
        circuit.check_parameters()


@FEW
@given(kind=st.sampled_from(KINDS), epochs=bad_numbers, learning_rate=bad_numbers)
def test_fit_adam_malformed_arguments(kind, epochs, learning_rate):
    circuit = copy.deepcopy(CIRCUITS[kind])
    x = valid_data(kind, batch=5, seed=2)
    out, err = library_call(fit_adam, circuit, x, epochs=epochs, learning_rate=learning_rate,
                            progress=False)
    if err is None:
        assert all(math.isfinite(h) for h in out)
        circuit.check_parameters()


size_values = st.one_of(st.integers(-1, 3), st.booleans(), st.floats(-1, 3),
                        st.sampled_from([math.nan, None, "2"]))


@FUZZ
@given(num_units=size_values, root_size=size_values, num_categories=size_values,
       kind=st.sampled_from(["categorical", "bernoulli", "gaussian", "Gaussian", "poisson", ""]),
       product=st.sampled_from(["einsum", "hadamard", "Einsum", "cp", None]),
       graph=st.sampled_from(["pd", "kary", "chain1"]))
@example(num_units=2, root_size=1, num_categories=3, kind="poisson", product="einsum",
         graph="pd")
@example(num_units=2, root_size=1, num_categories=3, kind="categorical", product="cp",
         graph="pd")
@example(num_units=2, root_size=1, num_categories=0, kind="categorical", product="einsum",
         graph="pd")
@example(num_units=2, root_size=1, num_categories=None, kind="bernoulli", product="einsum",
         graph="kary")
@example(num_units=2, root_size=1, num_categories=3, kind="categorical", product="einsum",
         graph="pd")
@example(num_units=2, root_size=2, num_categories=None, kind="gaussian", product="hadamard",
         graph="chain1")
def test_circuit_bad_settings(num_units, root_size, num_categories, kind, product, graph):
    region_graph = {"pd": poon_domingos(2, 2, 1), "kary": kary_graph(),
                    "chain1": chain_region_graph(1)}[graph]
    circuit, err = library_call(Circuit, region_graph, num_units, input=kind,
                                num_categories=num_categories, product=product,
                                root_size=root_size)
    problems = [message for message, ok in (
        ("num_units must be a positive integer", is_int_at_least(num_units, 1)),
        ("root_size must be a positive integer", is_int_at_least(root_size, 1)),
        ("input must be one of", kind in ("categorical", "bernoulli", "gaussian")),
        ("product must be one of", product in ("einsum", "hadamard")),
        ("categorical inputs need num_categories >= 1",
         kind != "categorical" or is_int_at_least(num_categories, 1))) if not ok]
    if not problems and graph == "kary" and product == "einsum":
        problems = ["children: use product='hadamard'"]
    if problems:
        assert_error(err, ParameterError, *problems)
        return
    assert err is None, err
    circuit.check_parameters()
    x = valid_data("bernoulli")[:, :circuit.num_variables]
    out = circuit(x.float() if kind == "gaussian" else x)
    assert not torch.isnan(out).any()


@FEW
@given(num_samples=bad_numbers, root_output=bad_numbers, kind=st.sampled_from(KINDS))
@example(num_samples=2, root_output=0, kind="categorical")
@example(num_samples=2, root_output=1, kind="bernoulli")
@example(num_samples=2, root_output=True, kind="gaussian")
def test_sample_bad_arguments(num_samples, root_output, kind):
    out, err = library_call(sample, CIRCUITS[kind], num_samples, root_output=root_output)
    problems = [message for message, ok in (
        ("number of samples must be", is_int_at_least(num_samples, 1)),
        ("root output", is_int_at_least(root_output, 0)
         and root_output < CIRCUITS[kind].root_size)) if not ok]
    if problems:
        assert_error(err, DataError, *problems)
        return
    assert err is None, err
    assert out.shape == (int(num_samples), D) and not torch.isnan(out).any()


@FUZZ
@given(query=masks(), evidence=masks(), kind=st.sampled_from(KINDS))
def test_log_conditional_malformed_masks(query, evidence, kind):
    circuit = CIRCUITS[kind]
    x = valid_data(kind)
    query = torch.zeros(3, D, dtype=torch.bool) if query is None else query
    out, err = library_call(log_conditional, circuit, x, query, evidence)
    if err is None:
        assert out.shape == (3,) and not torch.isnan(out).any()
        if kind != "gaussian":
            assert (out <= 1e-5).all()


# ----------------------------------------------------------------------------- pinned errors


@pytest.mark.parametrize("kind", KINDS)
def test_data_errors(kind):
    circuit = CIRCUITS[kind]
    x = valid_data(kind)
    shape, empty = f"data must have shape [batch, {D}], got ", "data: the batch is empty"
    cases = [(x[0], shape + "(4,)"), (x[:, :3], shape + "(3, 3)"), (x[None], shape + "(1, 3, 4)"),
             (x[:0], empty), (torch.zeros(0, D), empty)]
    if kind == "gaussian":
        real = "data must be real numbers, got dtype"
        cases += [(torch.tensor([[0.1, math.nan, 0.2, 0.3]]),
                   "data has a non-finite value at sample 0, variable 1"),
                  (torch.full((1, D), math.inf),
                   "data has a non-finite value at sample 0, variable 0"),
                  (x > 0.5, f"{real} torch.bool"),
                  (x.to(torch.complex64), f"{real} torch.complex64")]
    else:
        ints = "categorical data must be integers, got dtype"
        top = 1 if kind == "bernoulli" else C - 1
        cases += [(x.float(), f"{ints} torch.float32"), (x.double(), f"{ints} torch.float64"),
                  (x + 0.5, f"{ints} torch.float32"),
                  (x.to(torch.complex64), f"{ints} torch.complex64")]
        for bad in (x + C, x - 3):  # every value out of range: the first one is named
            cases.append((bad, f"value {int(bad[0, 0])} at sample 0, variable 0 is out of range "
                               f"0..{top}"))
        one = x.clone()
        one[1, 2] = top + 2  # the only bad value: its sample and variable are named
        cases.append((one, f"value {top + 2} at sample 1, variable 2 is out of range 0..{top}"))
    for bad, message in cases:
        with pytest.raises(DataError, match=re.escape(message)):
            circuit.log_likelihood(bad)
    for bad_mask in [torch.zeros(3, D, dtype=torch.uint8), torch.zeros(3, D),
                     torch.zeros(3, D + 1, dtype=torch.bool), torch.zeros(D, dtype=torch.bool),
                     torch.zeros(2, D, dtype=torch.bool)]:
        with pytest.raises(DataError, match=re.escape(
                f"missing must be a bool mask of shape (3, {D}), got {bad_mask.dtype} "
                f"{tuple(bad_mask.shape)}")):
            circuit.log_likelihood(x, bad_mask)
    # out-of-range or NaN values are fine where they are missing
    odd = x.clone().double() if kind == "gaussian" else x.clone()
    odd[:, 1] = math.nan if kind == "gaussian" else C + 5
    missing = torch.zeros(3, D, dtype=torch.bool)
    missing[:, 1] = True
    assert not torch.isnan(circuit.log_likelihood(odd, missing)).any()


def test_ragged_data_is_a_data_error():
    circuit = CIRCUITS["categorical"]
    with pytest.raises(DataError, match=re.escape("data must be a rectangular numeric array (")):
        circuit.log_likelihood([[0, 1, 2, 0], [1, 2]])
    with pytest.raises(DataError,
                       match=re.escape("missing must be a rectangular numeric array (")):
        circuit.log_likelihood(valid_data("categorical")[:2], [[True], [False, True]])
    with pytest.raises(DataError,
                       match=re.escape("training data must be a rectangular numeric array (")):
        fit_em(circuit, [[0, 1, 2, 0], [1, 2]], progress=False)


def test_bool_data_is_fine_for_bernoulli():
    circuit = CIRCUITS["bernoulli"]
    x = valid_data("bernoulli")
    torch.testing.assert_close(circuit.log_likelihood(x.bool()), circuit.log_likelihood(x))


def raises(cls: type[HMMLVDError], message: str):
    """``pytest.raises(cls)`` whose message must contain ``message`` verbatim."""
    return pytest.raises(cls, match=re.escape(message))


def test_settings_errors():
    graph = poon_domingos(2, 2, 1)
    for k in (0, -1, True, False, 2.0, None, "2"):
        with raises(ParameterError, f"num_units must be a positive integer, got {k!r}"):
            Circuit(graph, k, input="bernoulli")
        with raises(ParameterError, f"root_size must be a positive integer, got {k!r}"):
            Circuit(graph, 2, input="bernoulli", root_size=k)
    for name in ("Categorical", "binary", "", None):
        with raises(ParameterError, "input must be one of ('categorical', 'bernoulli', "
                                    f"'gaussian'), got {name!r}"):
            Circuit(graph, 2, input=name)
    for name in ("Einsum", "cp", "", None):
        with raises(ParameterError, f"product must be one of ('einsum', 'hadamard'), got "
                                    f"{name!r}"):
            Circuit(graph, 2, input="bernoulli", product=name)
    for c in (None, 0, True, 2.0):
        with raises(ParameterError, f"categorical inputs need num_categories >= 1, got {c!r}"):
            Circuit(graph, 2, input="categorical", num_categories=c)
    for lo, hi in ((0.0, 1.0), (0.1, 0.01), (-1.0, 1.0), (math.nan, 1.0)):
        with raises(ParameterError, f"need 0 < min_var <= max_var, got {lo}, {hi}"):
            Circuit(graph, 2, input="gaussian", min_var=lo, max_var=hi)


def test_einsum_refuses_kary_partitions():
    star = hclt_region_graph([(0, 1), (0, 2), (0, 3)], root=0)
    binary_only = "einsum layers need binary partitions, but region (0, 1, 2, 3) is split into"
    with raises(ParameterError, f"{binary_only} 4 children: use product='hadamard'"):
        Circuit(star, 2, input="bernoulli", product="einsum")
    with raises(ParameterError, f"{binary_only} 3 children: use product='hadamard'"):
        Circuit(kary_graph(), 2, input="bernoulli", product="einsum")
    Circuit(star, 2, input="bernoulli", product="hadamard").check_parameters()


def test_invalid_region_graphs():
    """Each graph breaks one rule (the others hold up to it), and the error names it."""
    p = Partition
    leaves3 = ((0,), (1,), (2,))
    bad = [
        (RegionGraph.from_partitions(3, [p((0, 1, 2), ((0, 1), (1, 2)))]),
         "partition of (0, 1, 2) is not decomposable: children overlap on [1]"),
        (RegionGraph(3, (*leaves3, (0, 1, 2)), (p((0, 1, 2), ((0,), (1,))),)),
         "partition of (0, 1, 2) is not decomposable: children cover [0, 1], not the parent's "
         "scope"),
        (RegionGraph.from_partitions(3, [p((0, 1), ((0,), (1,)))]),
         "variables [2] are in no leaf region"),
        (RegionGraph(3, (*leaves3, (0, 1)), (p((0, 1), ((0,), (1,))),)),
         "no root region: no region covers all 3 variables"),
        (RegionGraph.from_partitions(2, [p((0, 1), ((0,), (1,))), p((0, 1), ((0,),))]),
         "partition of (0, 1) has 1 child; it needs at least 2"),
        (RegionGraph.from_partitions(3, [p((0, 1, 2), ((0, 1), (2,))),
                                         p((0, 1), ((0,), (1, 2))), p((1, 2), ((1,), (0, 1)))]),
         "region graph has a cycle through regions"),
        (RegionGraph(2, ((0,), (1,), (0, 1), (0,)), (p((0, 1), ((0,), (1,))),)),
         "duplicate region (0,): each scope may be listed once"),
        (RegionGraph(3, (*leaves3, (0, 1), (0, 1, 2)), (p((0, 1, 2), leaves3),)),
         "regions [(0, 1)] are not reachable from the root"),
        (RegionGraph(2, ((0,), (1,), (0, 1), (1, 0)), (p((0, 1), ((0,), (1,))),)),
         "region (1, 0) is not sorted or repeats a variable"),
        (RegionGraph(0, (), ()), "num_variables must be >= 1, got 0"),
    ]
    for graph, message in bad:
        with raises(ParameterError, message):
            Circuit(graph, 2, input="bernoulli", product="hadamard")


def test_training_argument_errors():
    circuit = copy.deepcopy(CIRCUITS["categorical"])
    x = valid_data("categorical", batch=6)
    named = {"step_size": "step size must", "pseudocount": "pseudocount must be",
             "epochs": "epochs must be", "batch_size": "batch size must be"}
    for kwargs in ({"step_size": 0}, {"step_size": 1.5}, {"step_size": math.nan},
                   {"pseudocount": -0.1}, {"pseudocount": math.inf}, {"epochs": -1},
                   {"epochs": 1.5}, {"batch_size": 0}, {"batch_size": True}):
        (name, _), = kwargs.items()
        with raises(DataError, f"{named[name]} "):
            fit_em(circuit, x, progress=False, **kwargs)
    for kwargs in ({"step_size": 0}, {"pseudocount": -1}, {"step_size": True}):
        (name, _), = kwargs.items()
        with raises(DataError, f"{named[name]} "):
            em_step(circuit, x, **kwargs)
    for lr in (0, -0.1, math.nan, math.inf, True, None):
        with raises(DataError, f"learning rate must be a positive number, got {lr!r}"):
            fit_adam(circuit, x, learning_rate=lr, progress=False)
    with raises(DataError, "missing must have the shape of the data (6, 4), got (5, 4)"):
        fit_em(circuit, x, missing=torch.zeros(5, D, dtype=torch.bool), progress=False)
    with raises(DataError, f"training data must be a non-empty [N, {D}] array, got shape (4,)"):
        fit_em(circuit, x[0], progress=False)
    with raises(DataError, f"training data must be a non-empty [N, {D}] array, got shape "
                           f"(0, {D})"):
        fit_em(circuit, x[:0], progress=False)
    assert fit_em(circuit, x, epochs=0, progress=False) == []


def test_query_argument_errors():
    circuit = CIRCUITS["categorical"]
    x = valid_data("categorical")
    query = torch.zeros(3, D, dtype=torch.bool)
    query[:, 0] = True
    with raises(DataError, "a variable cannot be both queried and given as evidence"):
        log_conditional(circuit, x, query, query)
    masks_ = f"query and evidence must be masks of shape (3, {D}) or broadcastable to it, got"
    for bad in (torch.zeros(D + 1, dtype=torch.bool), torch.zeros(2, D, dtype=torch.bool)):
        with raises(DataError, f"{masks_} {tuple(bad.shape)} and {tuple(bad.shape)}"):
            log_conditional(circuit, x, bad)
        with raises(DataError, f"{masks_} (3, {D}) and {tuple(bad.shape)}"):
            log_conditional(circuit, x, query, bad)
    with raises(DataError, f"missing must be a bool mask of shape (3, {D}), got torch.bool "
                           f"(3, {D + 1})"):
        log_marginal(circuit, x, torch.zeros(3, D + 1, dtype=torch.bool))
    for n, why in ((0, ">= 1, got 0"), (-1, ">= 1, got -1"), (1.0, "an integer, got 1.0"),
                   (True, "an integer, got True"), (None, "an integer, got None")):
        with raises(DataError, f"number of samples must be {why}"):
            sample(circuit, n)
    for output, why in ((-1, "root output must be >= 0, got -1"),
                        (1, "root output 1 is out of range 0..0"),
                        (True, "root output must be an integer, got True"),
                        (0.0, "root output must be an integer, got 0.0")):
        with raises(DataError, why):
            sample(circuit, 2, root_output=output)


def test_zero_probability_samples_in_em():
    """A zero weight making some data impossible: EM refuses those samples (DataError), and
    leaves the parameters untouched."""
    circuit = copy.deepcopy(CIRCUITS["categorical"])
    with torch.no_grad():
        circuit.input_layer.log_prob[0, 2] = -math.inf  # leaf of pixel 0: never category 2
        circuit.input_layer.log_prob[0, :2] = math.log(0.5)
    circuit.check_parameters()
    leaf0 = circuit.input_layer.entry_var[0].item()
    x = valid_data("categorical", batch=4)
    x[:, leaf0] = torch.tensor([0, 1, 2, 1])
    before = copy.deepcopy(circuit)
    assert torch.isneginf(circuit.log_likelihood(x)[2])
    refused = ("samples [2] have probability 0 under the circuit, so EM cannot assign them; "
               "train with a pseudocount > 0")
    with raises(DataError, refused):
        em_step(circuit, x, pseudocount=1.0)
    with raises(DataError, refused):
        fit_em(circuit, x, full_batch=True, progress=False)
    with raises(DataError, "the observed values of sample 2 have probability zero; there is "
                           "nothing to condition on"):
        inpaint(circuit, x, torch.zeros_like(x, dtype=torch.bool))
    for p, q in zip(before.parameters(), circuit.parameters(), strict=True):
        assert torch.equal(p, q)
    # a zero sum weight: the root's only route to everything
    root_zero = copy.deepcopy(CIRCUITS["bernoulli"])
    with torch.no_grad():
        root_zero.root_sum.log_weight.fill_(-math.inf)
    with raises(ParameterError, "root sum is not normalised"):
        root_zero.check_parameters()
    with raises(DataError, "samples [0, 1, 2] have probability 0 under the circuit, so EM cannot "
                           "assign them"):
        em_step(root_zero, valid_data("bernoulli"))


# ----------------------------------------------------------------------------- check_parameters


def _corruptions() -> list[tuple[str, str, str]]:
    """(circuit, tensor, how): every layer type gets a NaN, a +inf and (where it is a
    distribution) an unnormalised entry."""
    parts = [("categorical", "input"), ("bernoulli", "input"), ("gaussian", "mean"),
             ("gaussian", "log_var"), ("categorical", "einsum"), ("bernoulli", "hadamard"),
             ("categorical", "mixing"), ("bernoulli", "mixing"), ("gaussian", "root"),
             ("padded", "mixing")]
    return [(kind, part, how) for kind, part in parts for how in ("nan", "posinf", "unnormalised")
            if not (part in ("mean", "log_var") and how == "unnormalised")]


def _tensor_of(circuit: Circuit, part: str) -> torch.Tensor:
    if part == "input":
        return circuit.input_layer.log_prob
    if part in ("mean", "log_var"):
        return getattr(circuit.input_layer, part)
    if part in ("einsum", "hadamard"):
        return circuit.layers[0].log_weight
    if part == "mixing":
        return circuit.mixers[-1].log_weight
    return circuit.root_sum.log_weight


@pytest.mark.parametrize(("kind", "part", "how"), _corruptions())
def test_check_parameters_catches_corruption(kind, part, how):
    if kind == "padded":
        circuit = Circuit(padded_graph(), 2, input="bernoulli", product="einsum")
    else:
        circuit = copy.deepcopy(CIRCUITS[kind])
    circuit.check_parameters()
    tensor = _tensor_of(circuit, part)
    with torch.no_grad():
        flat = tensor.view(-1)
        i = int(torch.isfinite(flat).nonzero()[-1])  # a real (not padded) entry
        flat[i] = {"nan": math.nan, "posinf": math.inf, "unnormalised": flat[i] + 0.5}[how]
    if part in ("mean", "log_var"):
        message = "Gaussian input has NaN or infinite means or variances"
    else:
        layer = {"input": "categorical input log_prob", "einsum": "layer 0 (EinsumLayer)",
                 "hadamard": "layer 0 (HadamardLayer)",
                 "mixing": f"mixing layer {len(circuit.mixers) - 1}", "root": "root sum"}[part]
        message = (f"{layer} is not normalised: log of its sums deviates by"
                   if how == "unnormalised" else f"{layer} has NaN or +inf log-probabilities")
    with raises(ParameterError, message):
        circuit.check_parameters()


def test_check_parameters_catches_a_padded_slot_made_positive():
    circuit = Circuit(padded_graph(), 2, input="bernoulli", product="einsum")
    mixer = next(m for m in circuit.mixers if not bool(m.valid.all()))
    with torch.no_grad():
        mixer.log_weight[~mixer.valid] = math.log(0.5)
    index = next(i for i, m in enumerate(circuit.mixers) if m is mixer)
    with raises(ParameterError, f"mixing layer {index} is not normalised: log of its sums "
                                "deviates by"):
        circuit.check_parameters()
