"""The compiled CPU kernels against float64 references, the PyTorch fallback and backend selection."""

import math
import warnings

import pytest
import torch

import em_hf.ops._extension as extension
from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.ops import backend, token_entropy
from em_hf.ops._torch_impl import (
    GRAD_COLUMNS,
    STAT_COLUMNS,
    STAT_ENTROPY,
    STAT_LABEL_LOGPROB,
    STAT_SELF_CERTAINTY,
    lse_of,
)
from tests.helpers import use_backend


@pytest.fixture
def kernels(entropy_backend):
    if entropy_backend != "cpp":
        pytest.skip("exercises the compiled kernels directly")
    assert extension.kernels_available()
    return torch.ops.em_hf


def reference_forward(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.double() / temperature
    lse = torch.logsumexp(z, dim=-1)
    log_p = z - lse[:, None]
    terms = torch.where(torch.isfinite(log_p), log_p.exp() * log_p, torch.zeros_like(log_p))
    return -terms.sum(-1), lse


def reference_grad(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Autograd of -sum p log p in float64, row by row over the finite entries only (masked entries,
    which have p = 0, get 0)."""
    grad = torch.zeros(logits.shape, dtype=torch.float64)
    for i, row in enumerate(logits.double()):
        finite = torch.isfinite(row)
        z = row[finite].clone().requires_grad_(True)
        log_p = torch.log_softmax(z / temperature, dim=-1)
        (row_grad,) = torch.autograd.grad(-(log_p.exp() * log_p).sum(), z)
        grad[i, finite] = row_grad
    return grad


@pytest.mark.parametrize("vocab", [1, 7, 16, 2047, 2048, 2049, 49152])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_forward_and_backward_match_float64(kernels, vocab, temperature):
    generator = torch.Generator().manual_seed(vocab)
    logits = (
        torch.randn(9, vocab, generator=generator) * torch.tensor([0.01, 1, 5, 20, 100, 1, 1, 1, 1])[:, None]
    )
    if vocab > 3:
        logits[5, ::3] = -math.inf
        logits[6, 1:] = -math.inf
    logits[7] = -math.inf
    stats = kernels.entropy_forward(logits, temperature, None, False)
    entropy, lse = stats[:, STAT_ENTROPY], lse_of(stats, temperature)
    expected_entropy, expected_lse = reference_forward(logits, temperature)
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=5e-6, rtol=2e-6)
    finite = torch.isfinite(expected_lse)
    torch.testing.assert_close(lse.double()[finite], expected_lse[finite], atol=2e-5, rtol=1e-6)
    assert lse[7].item() == -math.inf and entropy[7].item() == 0.0
    grad = kernels.entropy_backward(entropy_grads(torch.ones(9)), logits, stats, temperature, None)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    expected_grad = reference_grad(logits[:7], temperature)  # the all -inf row has no autograd reference
    # float32 limits: log p of a logit 100 away from the max has an absolute error ~1e-5.
    torch.testing.assert_close(grad[:7].double(), expected_grad, atol=2e-5, rtol=1e-5)
    assert (grad[7] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(kernels, dtype):
    logits = (torch.randn(4, 151936, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    logits[1, :1000] = -math.inf
    stats = kernels.entropy_forward(logits, 1.0, None, False)
    entropy = stats[:, STAT_ENTROPY]
    assert entropy.dtype == torch.float32
    expected, _ = reference_forward(logits, 1.0)
    torch.testing.assert_close(entropy.double(), expected, atol=2e-5, rtol=1e-5)
    grad = kernels.entropy_backward(entropy_grads(torch.full((4,), 2.0)), logits, stats, 1.0, None)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), 2 * reference_grad(logits, 1.0), atol=1e-4, rtol=1e-2)


def test_row_strided_and_zero_row_inputs(kernels):
    wide = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    view = wide[:, 10:210]  # stride(0) = 300, last dimension contiguous: read in place
    assert view.stride() == (300, 1)
    entropy = kernels.entropy_forward(view, 1.0, None, False)[:, STAT_ENTROPY]
    torch.testing.assert_close(entropy.double(), reference_forward(view, 1.0)[0], atol=5e-6, rtol=1e-6)
    transposed = torch.randn(50, 6).t()  # last dimension not contiguous: copied first
    entropy = kernels.entropy_forward(transposed, 1.0, None, False)[:, STAT_ENTROPY]
    torch.testing.assert_close(entropy.double(), reference_forward(transposed, 1.0)[0], atol=5e-6, rtol=1e-6)
    assert kernels.entropy_forward(torch.empty(0, 64), 1.0, None, True).shape == (0, STAT_COLUMNS)


def test_nan_and_inf_propagate_to_the_entropy(kernels):
    logits = torch.tensor([[0.0, float("nan"), 1.0], [0.0, float("inf"), 1.0], [1.0, 2.0, 3.0]])
    entropy = kernels.entropy_forward(logits, 1.0, None, False)[:, STAT_ENTROPY]
    assert torch.isnan(entropy[:2]).all() and torch.isfinite(entropy[2])
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        token_entropy(logits)


def test_wrong_rank_and_dtype_are_rejected(kernels):
    with pytest.raises(RuntimeError, match="2-D"):
        kernels.entropy_forward(torch.zeros(2, 3, 4), 1.0, None, False)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kernels.entropy_forward(torch.zeros(2, 3, dtype=torch.float64), 1.0, None, False)
    with pytest.raises(RuntimeError, match="temperature"):
        kernels.entropy_forward(torch.zeros(2, 3), 0.0, None, False)


def test_kernels_and_fallback_agree(monkeypatch):
    logits = torch.randn(6, 3000, generator=torch.Generator().manual_seed(2)) * 4
    logits[2, ::5] = -math.inf
    results = {}
    for name in ("cpp", "torch"):
        use_backend(monkeypatch, name)
        assert backend() == name
        z = logits.clone().requires_grad_(True)
        h = token_entropy(z, 0.7)
        (h * torch.arange(1.0, 7.0)).sum().backward()
        results[name] = (h.detach(), z.grad)
    torch.testing.assert_close(results["cpp"][0], results["torch"][0], atol=5e-6, rtol=1e-6)
    torch.testing.assert_close(results["cpp"][1], results["torch"][1], atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "settings", [{}, {"n_steps": 10, "lr": 0.3, "kl_weight": 0.05}, {"optimizer": "sgd"}]
)
def test_fused_em_inf_agrees_with_the_pytorch_processor(monkeypatch, settings):
    scores = (
        torch.randn(8, 5000, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.3, 6, 8)[:, None]
    )
    scores[1, ::4] = -math.inf
    processor = EntropyMinLogitsProcessor(**settings)
    use_backend(monkeypatch, "cpp")
    fused = processor(None, scores)
    use_backend(monkeypatch, "torch")
    plain = processor(None, scores)
    truth = processor(None, scores.double())  # the PyTorch procedure in float64
    assert torch.equal(torch.isinf(fused), torch.isinf(scores))
    finite = torch.isfinite(scores)
    fused_error = (fused.double() - truth)[finite].abs()
    plain_error = (plain.double() - truth)[finite].abs()
    # Adam turns rounding into a full step where a gradient crosses zero, so a few coordinates may
    # differ by up to ~lr in float32 whichever way it is computed; the rest agree closely.
    assert fused_error.max() <= max(2 * plain_error.max().item(), 1e-4)
    assert torch.quantile(fused_error.float(), 0.999) < 1e-4


def test_fused_adaptive_temperature_agrees_with_the_pytorch_warper(monkeypatch):
    scores = (
        torch.randn(16, 3000, generator=torch.Generator().manual_seed(4))
        * torch.linspace(0.1, 8, 16)[:, None]
    )
    warper = AdaptiveTemperatureLogitsWarper(alpha=0.5, tol=0.01)
    use_backend(monkeypatch, "cpp")
    fused = warper.temperatures(scores)
    use_backend(monkeypatch, "torch")
    plain = warper.temperatures(scores)
    torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)


def test_backend_environment_variable(monkeypatch):
    use_backend(monkeypatch, "torch")
    assert backend() == "torch"
    use_backend(monkeypatch, "nonsense")
    with pytest.raises(ValueError, match="EM_HF_ENTROPY_BACKEND"):
        backend()


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    use_backend(monkeypatch, "auto")
    monkeypatch.setattr(
        extension,
        "_state",
        {"loaded": False, "error": OSError("no compiler"), "warned": False, "cuda": False},
    )
    logits = torch.randn(3, 10)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        first = token_entropy(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = token_entropy(logits)
    assert backend() == "torch"
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first.double(), reference_forward(logits, 1.0)[0], atol=1e-6, rtol=1e-6)
    use_backend(monkeypatch, "cpp")
    with pytest.raises(RuntimeError, match="failed to build"):
        token_entropy(logits)


def test_op_autograd_covers_entropy_self_certainty_and_label_logprob(kernels):
    """The op called directly is differentiable in its three value columns (one fused backward),
    and refuses a second derivative instead of returning zeros."""
    logits = (torch.randn(4, 70, generator=torch.Generator().manual_seed(5)) * 3).requires_grad_(True)
    labels = torch.tensor([3, 0, -100, 69])
    stats = kernels.entropy_forward(logits, 0.7, labels, True)
    weights = torch.arange(1.0, 5.0)
    loss = (stats[:, STAT_ENTROPY] * weights).sum() + 2 * stats[:, STAT_SELF_CERTAINTY].sum()
    (loss - stats[:, STAT_LABEL_LOGPROB].sum()).backward()
    z = logits.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(z / 0.7, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    certainty = torch.logsumexp(z / 0.7, dim=-1) - (z / 0.7).mean(-1) - math.log(70)
    picked = log_p[[0, 1, 3], [3, 0, 69]]
    ((entropy * weights.double()).sum() + 2 * certainty.sum() - picked.sum()).backward()
    torch.testing.assert_close(logits.grad.double(), z.grad, atol=1e-6, rtol=1e-5)
    again = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        kernels.entropy_forward(again, 1.0, None, False)[:, STAT_ENTROPY].sum(), again, create_graph=True
    )
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()


def entropy_grads(grad_entropy: torch.Tensor) -> torch.Tensor:
    """The backward op's [rows, 3] gradients for a loss on the entropy alone."""
    grads = torch.zeros(grad_entropy.shape[0], GRAD_COLUMNS)
    grads[:, 0] = grad_entropy
    return grads


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("entropy_forward", (torch.randn(3, 40, requires_grad=True), 0.7, None, False)),
        ("entropy_forward", (torch.randn(3, 40, requires_grad=True), 0.7, torch.tensor([1, -100, 39]), True)),
        ("entropy_backward", (torch.ones(3, 3), torch.randn(3, 40), torch.zeros(3, 6), 1.0, None)),
        ("em_inf", (torch.randn(3, 40), 0.3, 3, 0.1, 0.001, True, 0.9, 0.999, 1e-8)),
        ("adaptive_temperature", (torch.randn(3, 40), 0.85, 0.3, 0.01, 1.0, 100, 0.1)),
    ],
)
def test_custom_ops_pass_torch_opcheck(kernels, op, args):
    """Schema, fake (meta) implementation and registered autograd are consistent (torch.compile-ready)."""
    torch.library.opcheck(getattr(kernels, op).default, args)
