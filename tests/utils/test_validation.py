"""The one validation module: numbers, integers and temperatures are judged the same everywhere."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from em_hf.generation import AdaptiveTemperatureLogitsWarper
from em_hf.ops import (
    entropy_grad,
    linear_entropy_loss,
    linear_token_entropy,
    softmax_entropy,
    token_entropy,
    token_statistics,
)
from em_hf.utils.validation import check_int, check_number, is_real_number


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, "1", None, 1j])
def test_non_numbers_and_non_finite_numbers_are_refused(value):
    assert not is_real_number(value)
    with pytest.raises(ValueError, match="`x` must be a finite number"):
        check_number("x", value)


def test_intervals_name_the_argument_and_the_range():
    assert check_number("lr", 0.1, low=0.0, low_open=True) == 0.1
    with pytest.raises(ValueError, match=r"`lr` must be a finite number in \(0.0, inf\], got 0"):
        check_number("lr", 0, low=0.0, low_open=True)
    with pytest.raises(
        ValueError, match=r"`top_p` must be a finite number in \(0.0, 1.0\] \(hint\), got 1.5"
    ):
        check_number("top_p", 1.5, low=0.0, high=1.0, low_open=True, hint=" (hint)")


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None])
def test_integers_refuse_bools_floats_and_small_values(value):
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        check_int("n", value)
    assert check_int("n", 0, minimum=0) == 0


@pytest.mark.parametrize("bad", [True, 0, -0.5, math.nan, math.inf])
def test_both_entropy_ops_judge_a_temperature_alike(bad):
    """token_entropy and linear_token_entropy once disagreed on bools (True passed as 1.0 in one)."""
    logits = torch.randn(3, 8)
    hidden, weight = torch.randn(3, 4), torch.randn(8, 4)
    with pytest.raises((ValueError, TypeError), match="`temperature`"):
        token_entropy(logits, temperature=bad)
    with pytest.raises((ValueError, TypeError), match="`temperature`"):
        linear_token_entropy(hidden, weight, temperature=bad)


def _temperature_ops(logits, hidden, weight):
    """Every op that takes a temperature, as op(temperature)."""
    return {
        "token_entropy": lambda t: token_entropy(logits, temperature=t),
        "token_statistics": lambda t: token_statistics(logits, temperature=t),
        "softmax_entropy": lambda t: softmax_entropy(logits, temperature=t),
        "entropy_grad": lambda t: entropy_grad(logits, temperature=t),
        "linear_token_entropy": lambda t: linear_token_entropy(hidden, weight, temperature=t),
        "linear_entropy_loss": lambda t: linear_entropy_loss(hidden, weight, torch.ones(3), temperature=t),
    }


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "`temperature` must be a real number, got bool True; a bool is not a temperature"),
        ("0.5", TypeError, "`temperature` must be a real number, got str"),
        (None, TypeError, "`temperature` must be a real number, got NoneType"),
        (0, ValueError, "`temperature` must be a finite number > 0, got 0.0"),
        (-0.5, ValueError, "`temperature` must be a finite number > 0"),
        (math.nan, ValueError, "`temperature` must be a finite number > 0"),
        (math.inf, ValueError, "`temperature` must be a finite number > 0"),
        (1e-300, ValueError, "`temperature` must be >= 1e-37, got 1e-300"),
        (torch.tensor(1, dtype=torch.int64), TypeError, "`temperature` must be a floating-point tensor"),
    ],
)
def test_every_op_gives_one_message_per_cause(value, error, message):
    """One check for every op: T=1e-300 was once reported as "logits contain NaN or +inf", True was
    accepted by one op and refused by another."""
    ops = _temperature_ops(torch.randn(3, 8), torch.randn(3, 4), torch.randn(8, 4))
    for op in ops.values():
        with pytest.raises(error, match=re.escape(message)):
            op(value)


def test_numpy_scalars_and_0_dim_tensors_are_numbers_everywhere():
    """np.float32(0.5) was refused; it, a 0-dim tensor and an int give what the float gives."""
    ops = _temperature_ops(torch.randn(3, 8), torch.randn(3, 4), torch.randn(8, 4))
    for name, op in ops.items():
        for number, same in (
            (0.5, np.float32(0.5)),
            (0.5, np.float64(0.5)),
            (0.5, torch.tensor(0.5)),
            (2.0, 2),
        ):
            for got, expected in zip(_outputs(op(same)), _outputs(op(number)), strict=True):
                torch.testing.assert_close(got, expected, msg=f"{name} with {same!r}")


def _outputs(result) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, tuple) else (result,)


def test_a_tensor_temperature_is_per_row_where_allowed_and_refused_elsewhere():
    """softmax_entropy, token_entropy and token_statistics take one temperature per row; the others
    take one number and say so (a tensor once passed their check and then failed later)."""
    logits = torch.randn(3, 8)
    per_row = torch.tensor([[0.5], [1.0], [2.0]])
    expected = torch.stack([token_entropy(logits[i], temperature=float(per_row[i])) for i in range(3)])
    torch.testing.assert_close(softmax_entropy(logits, temperature=per_row).entropy, expected)
    torch.testing.assert_close(token_entropy(logits, temperature=per_row), expected)
    torch.testing.assert_close(token_statistics(logits, temperature=per_row).entropy, expected)
    with pytest.raises(ValueError, match="finite number > 0 in every entry"):
        token_entropy(logits, temperature=torch.tensor([[1.0], [0.0], [1.0]]))
    with pytest.raises(ValueError, match=re.escape("does not broadcast to the logits' rows (3, 1)")):
        token_entropy(logits, temperature=torch.tensor([0.5, 1.0, 2.0]))
    ops = _temperature_ops(logits, torch.randn(3, 4), torch.randn(8, 4))
    for name in ("entropy_grad", "linear_token_entropy", "linear_entropy_loss"):
        with pytest.raises(TypeError, match="`temperature` must be one number here"):
            ops[name](per_row)


def test_a_temperature_that_requires_grad_gets_its_gradient_or_is_refused():
    """It once got no gradient, silently. token_entropy differentiates through it (compared with
    float64 autograd of the textbook formula); the ops that cannot refuse it."""
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 2
    temperature = torch.tensor([[0.5], [1.0], [2.0]], requires_grad=True)
    token_entropy(logits, temperature=temperature).sum().backward()
    reference = temperature.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(logits.double() / reference, dim=-1)
    (-(log_p.exp() * log_p).sum()).backward()
    torch.testing.assert_close(temperature.grad.double(), reference.grad, atol=1e-5, rtol=1e-5)
    ops = _temperature_ops(logits, torch.randn(3, 4), torch.randn(8, 4))
    for name in ("softmax_entropy", "entropy_grad", "linear_token_entropy", "linear_entropy_loss"):
        with pytest.raises(ValueError, match="`temperature` requires grad, but this op gives it no gradient"):
            ops[name](torch.tensor(0.5, requires_grad=True))


def test_adaptive_temperature_bounds_are_temperatures():
    """tau_min=1e-45 once returned +inf on the C++ backend; tau is a temperature, checked as one."""
    with pytest.raises(ValueError, match=re.escape("`tau_min` must be >= 1e-37, got 1e-45")):
        AdaptiveTemperatureLogitsWarper(tau_min=1e-45)
    with pytest.raises(TypeError, match="`tau_max` must be a real number, got bool"):
        AdaptiveTemperatureLogitsWarper(tau_max=True)
    assert AdaptiveTemperatureLogitsWarper(tau_min=np.float32(0.25)).tau_min == 0.25
