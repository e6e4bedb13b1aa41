import math

import pytest
import torch

from em_hf.ops import entropy_grad, softmax_entropy, token_entropy


def reference_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Independent float64 computation, one row at a time with Python's math module."""
    rows = logits.double().reshape(-1, logits.shape[-1]).tolist()
    values = []
    for row in rows:
        scaled = [z / temperature for z in row if z != -math.inf]
        if not scaled:
            values.append(0.0)
            continue
        top = max(scaled)
        weights = [math.exp(z - top) for z in scaled]
        total = sum(weights)
        values.append(-sum((w / total) * math.log(w / total) for w in weights if w > 0))
    return torch.tensor(values, dtype=torch.float64).reshape(logits.shape[:-1])


def reference_grad(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Autograd of the textbook formula in float64 (finite rows only)."""
    z = logits.double().clone().requires_grad_(True)
    log_p = torch.log_softmax(z / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum()
    (grad,) = torch.autograd.grad(entropy, z)
    return grad


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("scale", [0.1, 3.0, 50.0])
def test_entropy_matches_float64_reference(temperature, scale):
    torch.manual_seed(0)
    logits = torch.randn(7, 300) * scale
    logits[1, ::3] = -math.inf
    logits[2, :-1] = -math.inf  # a single finite token: entropy 0
    expected = reference_entropy(logits, temperature)
    got = token_entropy(logits, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    assert got[2].item() == 0.0


def test_uniform_and_extreme_values():
    uniform = torch.zeros(3, 1000)
    torch.testing.assert_close(token_entropy(uniform), torch.full((3,), math.log(1000)))
    huge = torch.tensor([[1e30, 0.0, -1e30], [-1e4, -1e4, -1e4]])
    torch.testing.assert_close(token_entropy(huge), torch.tensor([0.0, math.log(3)]))


def test_all_masked_row_has_zero_entropy_and_gradient():
    logits = torch.full((2, 5), -math.inf)
    logits[1] = torch.tensor([0.0, 1.0, -math.inf, 2.0, -math.inf])
    logits.requires_grad_(True)
    entropy = token_entropy(logits)
    assert entropy[0].item() == 0.0
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[0] == 0).all() and (logits.grad[1, [2, 4]] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(dtype):
    torch.manual_seed(1)
    logits = (torch.randn(4, 4096) * 4).to(dtype)
    got = token_entropy(logits)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_entropy(logits), atol=1e-4, rtol=1e-5)


def test_float64_stays_float64():
    logits = torch.randn(3, 50, dtype=torch.float64)
    got = token_entropy(logits)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_entropy(logits), atol=1e-12, rtol=1e-12)


def test_leading_dimensions_and_non_contiguous_and_empty():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 40)
    torch.testing.assert_close(token_entropy(logits), reference_entropy(logits).float(), atol=1e-5, rtol=1e-5)
    transposed = torch.randn(40, 6).t()
    assert not transposed.is_contiguous()
    torch.testing.assert_close(
        token_entropy(transposed), reference_entropy(transposed).float(), atol=1e-5, rtol=1e-5
    )
    assert token_entropy(torch.empty(0, 40)).shape == (0,)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_closed_form_gradient_matches_autograd_of_the_formula(temperature):
    torch.manual_seed(3)
    logits = torch.randn(5, 64, dtype=torch.float64) * 3
    torch.testing.assert_close(entropy_grad(logits, temperature), reference_grad(logits, temperature))


def test_backward_matches_autograd_and_weights_rows():
    torch.manual_seed(4)
    logits = (torch.randn(4, 32) * 2).requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 0.5, 0.0])
    (token_entropy(logits) * weights).sum().backward()
    expected = entropy_grad(logits.detach()) * weights[:, None]
    torch.testing.assert_close(logits.grad, expected)
    z = logits.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(z, -1)
    ((-(log_p.exp() * log_p).sum(-1)) * weights.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), z.grad, atol=1e-6, rtol=1e-5)


def test_half_precision_gradient_has_input_dtype():
    logits = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    token_entropy(logits).sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), entropy_grad(logits.detach()), atol=1e-2, rtol=1e-2)


def test_gradcheck_float64_with_masked_entries():
    torch.manual_seed(5)
    logits = torch.randn(3, 9, dtype=torch.float64)
    logits[0, 2] = -math.inf
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: token_entropy(z, 0.7), (logits,))


def test_softmax_entropy_terms():
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf]])
    stats = softmax_entropy(logits)
    torch.testing.assert_close(stats.probs, torch.tensor([[0.25, 0.75, 0.0]]))
    assert stats.log_probs[0, 2].item() == 0.0  # never -inf
    torch.testing.assert_close(stats.entropy, -(stats.probs * stats.log_probs).sum(-1))


def test_per_row_tensor_temperature():
    torch.manual_seed(6)
    logits = torch.randn(3, 20)
    temperatures = torch.tensor([[0.5], [1.0], [2.0]])
    got = softmax_entropy(logits, temperatures).entropy
    expected = torch.stack([token_entropy(logits[i], float(t)) for i, t in enumerate(temperatures.flatten())])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("logits", "temperature", "error", "match"),
    [
        (torch.ones(2, 3, dtype=torch.long), 1.0, TypeError, "floating-point"),
        (torch.ones(2, 0), 1.0, ValueError, "non-empty last"),
        (torch.ones(2, 3), 0.0, ValueError, "temperature"),
        (torch.ones(2, 3), float("inf"), ValueError, "temperature"),
        (torch.tensor([[0.0, float("nan")]]), 1.0, ValueError, "NaN or \\+inf"),
        (torch.tensor([[0.0, float("inf")]]), 1.0, ValueError, "NaN or \\+inf"),
    ],
)
def test_bad_input_errors(logits, temperature, error, match):
    with pytest.raises(error, match=match):
        token_entropy(logits, temperature)
    with pytest.raises(error, match=match):
        entropy_grad(logits, temperature)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        token_entropy([[0.0, 1.0]])
