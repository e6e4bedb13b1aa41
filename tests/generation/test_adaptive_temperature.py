import math

import pytest
import torch

from em_hf.generation import AdaptiveTemperatureLogitsWarper


def entropy64(values: list[float], tau: float) -> float:
    scaled = [v / tau for v in values if v != -math.inf]
    top = max(scaled)
    weights = [math.exp(v - top) for v in scaled]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


def scalar_bisection(row: list[float], alpha, threshold, tau_min, tau_max, max_iter, tol) -> float:
    """Algorithm 1 of the paper (Appendix B), one row, plain Python floats."""
    initial = entropy64(row, 1.0)
    target = max(threshold, alpha * initial)
    tau = 1.0
    if initial > threshold:
        low, high = tau_min, tau_max
        for _ in range(max_iter):
            mid = (high + low) / 2
            current = entropy64(row, mid)
            if abs(current - target) < tol:
                tau = mid
                break
            if current < target:
                low = mid
            else:
                high = mid
            tau = mid
    return tau


def sharpened(rows: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The warper's output: m + (z - m) / tau with m the row maximum, i.e. the distribution of
    z / tau with the top logit kept in place."""
    top = rows.amax(dim=-1, keepdim=True)
    return top + (rows - top) / tau.to(rows.dtype)[:, None]


SETTINGS = [
    {},
    {"alpha": 0.5, "threshold": 0.1, "tol": 0.01},
    {"alpha": 0.4, "threshold": 0.3, "tau_min": 0.05, "tau_max": 2.0, "max_iter": 7, "tol": 1e-4},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_vectorized_bisection_matches_scalar_bisection_per_row(settings):
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.05, 0.3, 1.0, 2.0, 4.0, 8.0]).repeat(4)
    rows = torch.randn(24, 200, generator=generator, dtype=torch.float64) * scales[:, None]
    rows[5, ::4] = -math.inf
    warper = AdaptiveTemperatureLogitsWarper(**settings)
    full = {"alpha": 0.85, "threshold": 0.3, "tau_min": 0.01, "tau_max": 1.0, "max_iter": 100, "tol": 0.1}
    full.update(settings)
    expected = torch.tensor([scalar_bisection(r.tolist(), **full) for r in rows], dtype=torch.float64)
    tau = warper.temperatures(rows)
    torch.testing.assert_close(tau, expected, atol=1e-12, rtol=0)
    above = torch.tensor([entropy64(r.tolist(), 1.0) > full["threshold"] for r in rows])
    assert above.sum() >= 20 and torch.equal(tau != 1.0, above)
    out = warper(None, rows)
    torch.testing.assert_close(out, sharpened(rows, expected))
    torch.testing.assert_close(out.log_softmax(-1), (rows / expected[:, None]).log_softmax(-1))


def test_float32_rows_agree_with_scalar_bisection():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(16, 1000, generator=generator) * torch.linspace(0.2, 6.0, 16)[:, None]
    warper = AdaptiveTemperatureLogitsWarper(alpha=0.5)
    expected = [scalar_bisection(r.double().tolist(), 0.5, 0.3, 0.01, 1.0, 100, 0.1) for r in rows]
    torch.testing.assert_close(
        warper.temperatures(rows), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_reaches_target_entropy_within_tolerance():
    generator = torch.Generator().manual_seed(2)
    rows = torch.randn(8, 500, generator=generator) * 2
    warper = AdaptiveTemperatureLogitsWarper(alpha=0.5, threshold=0.1, tol=0.05)
    out = warper(None, rows)
    before = torch.tensor([entropy64(r.double().tolist(), 1.0) for r in rows])
    after = torch.tensor([entropy64(r.double().tolist(), 1.0) for r in out])
    target = torch.clamp(0.5 * before, min=0.1)
    assert ((after - target).abs() < 0.05 + 1e-4).all()


def test_low_entropy_rows_untouched_and_order_never_changes():
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(6, 300, generator=generator)
    rows[0] = -10.0
    rows[0, 3] = 10.0  # entropy below the threshold
    out = AdaptiveTemperatureLogitsWarper()(None, rows)
    assert torch.equal(out[0], rows[0])
    assert torch.equal(out.argsort(dim=-1), rows.argsort(dim=-1))
    top = rows.amax(dim=-1, keepdim=True)
    assert torch.equal(out.amax(dim=-1, keepdim=True), top)  # the top logit stays in place
    below = rows[1:] < top[1:]
    assert ((top[1:] - out[1:])[below] > (top[1:] - rows[1:])[below]).all()  # gaps grow: tau < 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_dtype(dtype):
    rows = (torch.randn(3, 100) * 2).to(dtype)
    out = AdaptiveTemperatureLogitsWarper()(None, rows)
    assert out.dtype == dtype
    tau = AdaptiveTemperatureLogitsWarper().temperatures(rows)
    torch.testing.assert_close(out.float(), sharpened(rows.float(), tau).to(dtype).float())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"threshold": -1.0}, "threshold"),
        ({"tau_min": 0.0}, "tau_min"),
        ({"tau_min": 1.0, "tau_max": 0.5}, "tau_min"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0.0}, "tol"),
    ],
)
def test_out_of_range_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveTemperatureLogitsWarper(**kwargs)
