"""The log-space primitives of the sum layers, against plain torch on finite inputs and against
the stated behaviour at probability zero (value -inf / 0: no NaN, gradient 0)."""

from __future__ import annotations

import math

import torch

from hmmlvd.pc.logspace import exp_shifted, log_sum_exp, safe_log


def test_safe_log_matches_log_and_its_gradient_where_positive():
    values = torch.tensor([0.5, 2.0, 1e-30], dtype=torch.float64, requires_grad=True)
    out = safe_log(values)
    torch.testing.assert_close(out, torch.log(values.detach()))
    out.backward(torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(values.grad, torch.tensor([2.0, -1.5, 2e30], dtype=torch.float64))


def test_safe_log_of_zero_is_minus_infinity_with_gradient_zero():
    values = torch.tensor([0.0, 4.0], requires_grad=True)
    out = safe_log(values)
    assert out[0] == -math.inf and out[1] == math.log(4.0)
    out.backward(torch.tensor([5.0, 1.0]))  # even a non-zero upstream gradient gives 0 there
    assert values.grad.tolist() == [0.0, 0.25]


def test_exp_shifted_and_log_sum_exp_with_all_minus_infinity_rows():
    x = torch.tensor([[1.0, -2.0, 0.5], [-math.inf, -math.inf, -math.inf]], requires_grad=True)
    scaled, shift = exp_shifted(x)
    assert shift.tolist() == [[1.0], [0.0]]
    assert scaled.detach().max(-1).values.tolist() == [1.0, 0.0]
    out = log_sum_exp(x)
    assert torch.isclose(out[0], torch.logsumexp(x[0].detach(), 0)) and out[1] == -math.inf
    out.sum().backward()
    torch.testing.assert_close(x.grad[0], torch.softmax(x[0].detach(), 0))
    assert x.grad[1].tolist() == [0.0, 0.0, 0.0]

