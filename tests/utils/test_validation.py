"""The one validation module: numbers, integers and temperatures are judged the same everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.ops import entropy_grad, linear_token_entropy, softmax_entropy, token_entropy
from em_hf.utils.validation import check_int, check_number, check_temperature, is_real_number


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


def test_a_tensor_temperature_is_per_row_where_allowed_and_refused_elsewhere():
    """softmax_entropy takes one temperature per row; the differentiable ops take one number and say
    so (a tensor once passed their check and then failed inside ``float(temperature)``)."""
    logits = torch.randn(3, 8)
    per_row = torch.tensor([[0.5], [1.0], [2.0]])
    expected = torch.stack([token_entropy(logits[i], temperature=float(per_row[i])) for i in range(3)])
    torch.testing.assert_close(softmax_entropy(logits, temperature=per_row).entropy, expected)
    with pytest.raises(ValueError, match="finite and > 0 in every entry"):
        check_temperature(torch.tensor([[1.0], [0.0]]), allow_tensor=True)
    for op in (token_entropy, entropy_grad):
        with pytest.raises(TypeError, match="a Python number here"):
            op(logits, temperature=per_row)
    with pytest.raises(TypeError, match="a Python number here"):
        linear_token_entropy(torch.randn(3, 4), torch.randn(8, 4), temperature=torch.tensor(1.0))
