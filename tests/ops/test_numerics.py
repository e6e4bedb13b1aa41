"""Numerical edges of the ops, on both backends (tests/ops/conftest.py runs every test on the
compiled kernels and on PyTorch): outputs are finite in the input dtype or the call raises, large
logits and small temperatures keep their precision, and a second derivative raises."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.ops import adaptive_temperature, em_inf, entropy_grad, token_entropy, token_statistics


def reference_grad(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float64 autograd of -sum p log p, the row maximum subtracted first (so that z / T is
    representable in float64 for the temperatures used here)."""
    z = logits.double().clone().requires_grad_(True)
    shifted = (z - z.detach().amax(dim=-1, keepdim=True)) / temperature
    log_p = torch.log_softmax(shifted, dim=-1)
    (grad,) = torch.autograd.grad(-(log_p.exp() * log_p).sum(), z)
    return grad


def test_adaptive_temperature_on_float16_scores_near_the_top_of_the_range_is_finite():
    """z / tau overflowed float16 (65000 / 0.5 = inf): the output keeps the top logit in place."""
    scores = torch.tensor([[65000.0, 64990.0, 0.0, 100.0]], dtype=torch.float16)
    warper = AdaptiveTemperatureLogitsWarper(alpha=0.5, tol=0.01)
    out, tau = adaptive_temperature(scores, alpha=0.5, tol=0.01, return_tau=True)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    assert tau.item() < 1.0 and torch.equal(out, warper(None, scores))
    assert out[0, 0] == scores[0, 0]  # the top logit stays where it was (65000 is 64992 in float16)
    expected = torch.softmax(scores.double() / tau.item(), dim=-1)
    torch.testing.assert_close(torch.softmax(out.double(), dim=-1), expected, atol=2e-3, rtol=0)
    assert out[0, 2].item() == torch.finfo(torch.float16).min  # pushed below the range: clamped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_adaptive_temperature_with_a_tiny_tau_is_finite(dtype):
    """A tau near MIN_TEMPERATURE: the bisection subtracts the row maximum before dividing, so the
    entropy of z / tau is defined (it once became NaN and the output +inf)."""
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, -math.inf]], dtype=dtype)
    out, tau = adaptive_temperature(
        scores, alpha=0.01, threshold=0.0, tau_min=1e-30, tol=1e-6, return_tau=True
    )
    assert tau.item() < 0.2
    assert bool(torch.isfinite(out[0, :4]).all()) and out[0, 4].item() == -math.inf
    assert out.argmax().item() == 0


def test_a_tau_min_that_cannot_be_computed_is_refused():
    with pytest.raises(ValueError, match="`tau_min` must be >= 1e-37, got 1e-45"):
        AdaptiveTemperatureLogitsWarper(tau_min=1e-45)
    with pytest.raises(ValueError, match="`tau_min` must be >= 1e-37"):
        adaptive_temperature(torch.randn(2, 8), tau_min=1e-45)


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 1e38), ("sgd", 1e39)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_em_inf_overflow_raises_instead_of_returning_inf(optimizer, lr, dtype):
    """lr=1e38 (Adam) once returned +inf silently on the C++ backend. (SGD moves a logit by
    lr * |g| with |g| < 1, so it needs a larger lr to overflow float32.)"""
    scores = (torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 0.5).to(dtype)
    with pytest.raises(ValueError, match=r"overflow .*use a smaller `lr`"):
        EntropyMinLogitsProcessor(lr=lr, optimizer=optimizer)(None, scores)
    out = em_inf(scores, lr=0.1, optimizer=optimizer)  # a usual lr: finite, and still runs
    assert bool(torch.isfinite(out).all())


def test_em_inf_on_float16_scores_near_the_top_of_the_range():
    scores = torch.tensor([[65000.0, 64990.0, 64990.0, 0.0]], dtype=torch.float16)
    out = em_inf(scores, lr=0.1, n_steps=3)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())


def test_double_backward_through_token_entropy_raises():
    """The C++ backend once returned zeros for the second derivative."""
    logits = torch.randn(3, 20, requires_grad=True)
    (grad,) = torch.autograd.grad(token_entropy(logits).sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(grad.sum(), logits)


def test_entropy_grad_of_a_huge_tie_is_zero():
    """[[1e30, 1e30]] once gave [-0.693, -0.693]: lse = 1e30 + log 2 rounds log 2 away."""
    got = entropy_grad(torch.tensor([[1e30, 1e30], [1e30, -1e30]]))
    assert torch.equal(got, torch.zeros(2, 2))
    torch.testing.assert_close(token_entropy(torch.tensor([[1e30, 1e30]])), torch.tensor([math.log(2)]))


@pytest.mark.parametrize("offset", [1e5, 1e6, 1e7])
def test_entropy_grad_keeps_its_precision_at_large_logits(offset):
    """2% relative error at |z| = 1e5 and 90% at 1e7 before the row maximum was subtracted first.
    The logits are integers, so z + offset is exact in float32."""
    base = torch.randint(-6, 7, (4, 64), generator=torch.Generator().manual_seed(1)).float()
    logits = base + offset
    assert torch.equal(logits - offset, base)
    expected = reference_grad(base)
    torch.testing.assert_close(entropy_grad(logits).double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        token_entropy(logits).double(), token_entropy(base.double()), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("temperature", [1e-30, 1e-37])
def test_tiny_temperatures_are_computed_not_overflowed(temperature):
    """entropy_grad(randn, T=1e-30) once contained -inf on the C++ backend. As T -> 0, p is one-hot
    (or uniform over a tie), so H is 0 (log 3 for a three-way tie) and the gradient is 0: the terms
    are exp(-gap / T) = 0, and for the tie log p + H = 0 exactly."""
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(2))
    logits[0, :3] = logits[0].max() + 1  # a three-way tie at the top
    grad = entropy_grad(logits, temperature=temperature)
    assert torch.equal(grad, torch.zeros_like(grad))
    expected = torch.zeros(6)
    expected[0] = math.log(3)
    torch.testing.assert_close(token_entropy(logits, temperature=temperature), expected, atol=1e-6, rtol=0)
    stats = token_statistics(logits, temperature=temperature)
    assert bool(torch.isfinite(stats.entropy).all()) and bool((stats.self_certainty > 1e20).all())


def test_small_temperature_on_small_gaps_matches_float64():
    """T = 1e-4 on logits about 1e-4 apart around 10: a non-trivial distribution and gradient, where
    z / T = 1e5 would leave log p an absolute error of ~1e-2 in float32."""
    base = torch.randint(-4, 5, (3, 50), generator=torch.Generator().manual_seed(3)).double() * 1e-4
    logits = (base + 10).float()
    reference = reference_grad(logits.double(), 1e-4)
    got = entropy_grad(logits, temperature=1e-4)
    assert reference.abs().max() > 100
    torch.testing.assert_close(got.double(), reference, atol=1e-2, rtol=1e-3)
