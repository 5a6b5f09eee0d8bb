"""The HMM class (hmmlvd.hmm.model): configuration, parameter layout accessors, and the input
checks every inference entry point goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_with_the_default_device_elsewhere

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.hmm import HMM, HMMConfig, expected_counts

H, V, T = 3, 5, 4


@pytest.fixture
def hmm(make_hmm):
    return make_hmm(H, V, T, seed=101)


BAD_WINDOWS = {
    "token id too large": (torch.tensor([[0, 1, V, 2]]), "outside the vocabulary"),
    "negative token id": (torch.tensor([[0, -1, 2, 3]]), "outside the vocabulary"),
    "float windows": (torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "integer ids"),
    "bool windows": (torch.ones(2, 4, dtype=torch.bool),
                     r"^(token windows|prefix) must be integer ids, got dtype torch\.bool$"),
    "1-D windows": (torch.tensor([0, 1, 2, 3]), r"shape \[batch, length\]"),
    "3-D windows": (torch.zeros(2, 2, 4, dtype=torch.long), r"shape \[batch, length\]"),
    "empty batch": (torch.zeros(0, 4, dtype=torch.long), "batch of size 0"),
    "zero-length windows": (torch.zeros(3, 0, dtype=torch.long), "do not fit"),
    "window longer than T": (torch.zeros(2, T + 1, dtype=torch.long), "do not fit"),
}


ENTRIES = ["log_likelihood", "run_forward", "expected_counts", "next_token_distribution"]


# (an empty [B, 0] prefix is valid for next_token_distribution: it asks for p(x_1))
@pytest.mark.parametrize(("entry", "case"), [
    (entry, case) for entry in ENTRIES for case in BAD_WINDOWS
    if not (entry == "next_token_distribution" and case == "zero-length windows")])
def test_bad_windows_raise_data_error_naming_the_problem(hmm, case, entry):
    x, message = BAD_WINDOWS[case]
    if entry == "next_token_distribution" and case == "window longer than T":
        message = "do not fit|no position"
    call = {"log_likelihood": hmm.log_likelihood, "run_forward": hmm.run_forward,
            "next_token_distribution": hmm.next_token_distribution,
            "expected_counts": lambda w: expected_counts(hmm, w)}[entry]
    with pytest.raises(DataError, match=message):
        call(x)


def test_out_of_vocabulary_message_names_the_id(hmm):
    with pytest.raises(DataError, match=rf"token id {V + 7} .*\[0, {V}\)"):
        hmm.log_likelihood(torch.tensor([[0, V + 7]]))
    with pytest.raises(DataError, match=rf"^token id -3 is outside the vocabulary \[0, {V}\)$"):
        hmm.log_likelihood(torch.tensor([[0, -3], [V - 1, 1]]))  # a negative id beside a valid max


@pytest.mark.parametrize("length", [1, T - 1])
def test_expected_counts_needs_full_windows(hmm, length):
    with pytest.raises(DataError, match=f"the model needs T={T}"):
        expected_counts(hmm, torch.zeros(2, length, dtype=torch.long))


def test_check_windows_accepts_numpy_lists_and_small_ints(hmm):
    want = hmm.log_likelihood(torch.tensor([[0, 1, 2, 3]]))
    for x in (np.array([[0, 1, 2, 3]], dtype=np.int32), [[0, 1, 2, 3]],
              torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8)):
        checked = hmm.check_windows(x)
        assert checked.dtype == torch.long
        assert torch.equal(hmm.log_likelihood(x), want)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_matrix_accessors_follow_the_documented_layout(make_hmm, homogeneous):
    hmm = make_hmm(H, V, T, homogeneous, seed=102)
    assert tuple(hmm.emission.shape) == ((1 if homogeneous else T), V, H)
    assert tuple(hmm.transition.shape) == ((1 if homogeneous else T - 1), H, H)
    for t in range(T):
        e = hmm.emission_matrix(t)
        assert e.shape == (H, V)
        assert torch.equal(e, hmm.emission[0 if homogeneous else t].T)
        torch.testing.assert_close(e.sum(-1), torch.ones(H))
    for t in range(T - 1):
        assert torch.equal(hmm.transition_matrix(t), hmm.transition[0 if homogeneous else t])
    with pytest.raises(DataError, match=rf"^position {T} is outside the window \[0, {T}\)$"):
        hmm.emission_matrix(T)
    with pytest.raises(DataError, match=rf"^position -1 is outside the window \[0, {T}\)$"):
        hmm.emission_matrix(-1)
    with pytest.raises(DataError, match=rf"^transition step {T - 1} is outside \[0, {T - 1}\)$"):
        hmm.transition_matrix(T - 1)
    for model in (hmm, make_hmm(2, V, 6, homogeneous, seed=103)):  # also H < T - 1
        for length in range(1, model.length + 1):  # a window of L tokens takes L - 1 steps
            steps = model.transitions_for(length)
            assert tuple(steps.shape) == (length - 1, model.num_states, model.num_states)
            for t in range(length - 1):
                assert torch.equal(steps[t], model.transition_matrix(t))


def test_sizes_and_parameter_count(make_hmm):
    for homogeneous, pa, pb in ((False, T - 1, T), (True, 1, 1)):
        hmm = make_hmm(H, V, T, homogeneous, seed=103)
        assert (hmm.num_states, hmm.vocab_size, hmm.length) == (H, V, T)
        assert hmm.config.transition_positions == pa
        assert hmm.config.emission_positions == pb
        assert hmm.num_parameters == H + pa * H * H + pb * V * H


@pytest.mark.parametrize("kwargs", [{"num_states": 0}, {"vocab_size": -1}, {"length": 0},
                                    {"num_states": 2.0}, {"length": True}])
def test_bad_sizes(kwargs):
    sizes = {"num_states": H, "vocab_size": V, "length": T, **kwargs}
    (name, value), = kwargs.items()
    message = rf"^{name} must be a positive integer, got {value!r}$"
    with pytest.raises(ParameterError, match=message):
        HMMConfig(**sizes)
    with pytest.raises(ParameterError, match=message):
        HMM(**sizes)


def test_config_to_dict_round_trip():
    config = HMMConfig(H, V, T, True)
    assert HMMConfig(**config.to_dict()) == config


def test_a_prefix_of_probability_zero_is_named(make_hmm):
    """Word 0 never comes first: next-token distributions given prefixes starting with it do
    not exist (they would be 0/0). The message lists the first five such rows."""
    hmm = make_hmm(H, V, T, seed=104)
    emission = hmm.emission.clone()
    emission[0, 0] = 0
    emission[0] /= emission[0].sum(0, keepdim=True)
    hmm = HMM(H, V, T, initial=hmm.initial, transition=hmm.transition, emission=emission)
    prefixes = torch.tensor([[1, 2]] + [[0, 1]] * 7 + [[2, 0]])
    with pytest.raises(DataError) as info:
        hmm.next_token_distribution(prefixes)
    assert str(info.value) == ("prefix rows [1, 2, 3, 4, 5] have probability 0 under the model: "
                               "there is no next-token distribution to condition on")
    with pytest.raises(DataError, match=r"prefix rows \[0, 1, 2\] have probability 0"):
        hmm.sample(3, prefix=torch.tensor([0]), seed=0)
    ok = hmm.next_token_distribution(prefixes[[0, 8]])
    torch.testing.assert_close(ok.sum(-1), torch.ones(2))


def test_to_moves_every_parameter_in_place_and_returns_the_model():
    hmm = HMM(3, 5, 4, seed=0)
    shapes = {name: p.shape for name, p in hmm.parameters().items()}
    assert hmm.to("meta") is hmm
    assert hmm.device.type == "meta"
    assert {name: p.device.type for name, p in hmm.parameters().items()} == \
        dict.fromkeys(shapes, "meta")
    assert {name: p.shape for name, p in hmm.parameters().items()} == shapes


def test_parameters_given_as_float64_arrays_or_lists_become_float32_on_the_cpu():
    """Given parameters may be float64 tensors, numpy arrays or nested lists: the model holds
    them as float32 on its device (the CPU here), also with torch's default device elsewhere."""
    good = HMM(3, 5, 4, seed=1)
    given = [p.double() for p in good.parameters().values()]

    def build(form) -> list[torch.Tensor]:
        initial, transition, emission = (form(p) for p in given)
        hmm = HMM(3, 5, 4, initial=initial, transition=transition, emission=emission)
        return list(hmm.parameters().values())

    for form in (lambda p: p, lambda p: p.numpy(), lambda p: p.tolist()):
        for got, want in zip(build(form), good.parameters().values(), strict=True):
            assert got.dtype == torch.float32 and got.device.type == "cpu"
            torch.testing.assert_close(got, want)
    assert_same_with_the_default_device_elsewhere(lambda: build(lambda p: p.tolist()))


def test_the_documented_defaults_and_device_of_a_new_model():
    """``HMM(num_states, vocab_size, length=32, homogeneous=False, seed=0)`` on the CPU, as the
    class docstring says."""
    hmm = HMM(3, 5)
    assert (hmm.length, hmm.homogeneous, hmm.device.type) == (32, False, "cpu")
    assert hmm.fit_history == [] and hmm.valid_history == []  # no fit yet
    seeded = HMM(3, 5, 4, seed=0)
    for name, p in HMM(3, 5, 4).parameters().items():
        assert torch.equal(p, seeded.parameters()[name]), name


@pytest.mark.parametrize("name", ["initial", "transition", "emission"])
def test_a_parameter_that_is_not_numeric_is_named(name):
    given = {**HMM(3, 5, 4, seed=0).parameters(), name: [["a", "b"]]}
    with pytest.raises(ParameterError, match=rf"^{name} must be a numeric array \("):
        HMM(3, 5, 4, **given)
