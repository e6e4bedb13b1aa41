"""em_hf.ops.em_inf and em_hf.ops.adaptive_temperature: the functional forms behind the processors."""

import math

import pytest
import torch

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.ops import adaptive_temperature, em_inf, token_entropy
from tests.generation.test_adaptive_temperature import scalar_bisection
from tests.generation.test_entropy_min import reference_em_inf
from tests.helpers import use_backend


def mixed_rows(dtype=torch.float32, vocab=300) -> torch.Tensor:
    """Rows above the threshold (several scales, one with masked tokens) and below it (one sharp,
    one with a single finite token)."""
    generator = torch.Generator().manual_seed(7)
    rows = torch.randn(6, vocab, generator=generator) * torch.tensor(
        [[0.5], [2.0], [1.0], [4.0], [1.0], [1.0]]
    )
    rows[2, ::3] = -math.inf
    rows[4] = -8.0
    rows[4, 5] = 12.0  # entropy ~0: below the threshold
    rows[5, 1:] = -math.inf  # one finite token: entropy 0
    return rows.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_em_inf_equals_the_processor_and_leaves_low_rows_alone(dtype):
    scores = mixed_rows(dtype)
    copy = scores.clone()
    settings = {"threshold": 0.3, "n_steps": 4, "lr": 0.2, "kl_weight": 0.01, "optimizer": "adam"}
    out = em_inf(scores, **settings)
    assert torch.equal(scores, copy)  # the input is not modified
    assert torch.equal(out, EntropyMinLogitsProcessor(**settings)(None, scores))
    assert out.dtype == dtype and torch.equal(out.isinf(), scores.isinf())
    assert torch.equal(out[4:], scores[4:])
    assert bool((token_entropy(out[:4]) < token_entropy(scores[:4])).all())


def test_em_inf_rows_are_independent_and_match_the_reference_procedure():
    scores = mixed_rows()
    out = em_inf(scores, n_steps=5, lr=0.3)
    for i in (0, 1, 3):  # the rows without masked tokens: the autograd reference has no -inf guard
        torch.testing.assert_close(out[i], reference_em_inf(scores[i], n_steps=5, lr=0.3), atol=1e-3, rtol=0)
    for i in range(scores.shape[0]):
        torch.testing.assert_close(
            out[i : i + 1], em_inf(scores[i : i + 1], n_steps=5, lr=0.3), atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_adaptive_temperature_equals_the_warper(dtype):
    scores = mixed_rows(dtype)
    copy = scores.clone()
    settings = {"alpha": 0.6, "threshold": 0.3, "tau_min": 0.05, "tau_max": 1.5, "max_iter": 30, "tol": 0.01}
    out, tau = adaptive_temperature(scores, **settings, return_tau=True)
    assert torch.equal(scores, copy)
    warper = AdaptiveTemperatureLogitsWarper(**settings)
    assert torch.equal(out, warper(None, scores)) and torch.equal(tau, warper.temperatures(scores))
    assert torch.equal(out, adaptive_temperature(scores, **settings))
    expected = [scalar_bisection(row.double().tolist(), **settings) for row in scores]
    torch.testing.assert_close(tau, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool((tau[:4] < 1.0).all()) and tau[4:].tolist() == [1.0, 1.0]
    assert torch.equal(out[4:], scores[4:]) and torch.equal(out.isinf(), scores.isinf())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_and_pytorch_backends_agree(monkeypatch, dtype):
    scores = mixed_rows(dtype, vocab=3000)
    results = {}
    for name in ("cpp", "torch"):
        use_backend(monkeypatch, name)
        results[name] = (em_inf(scores, n_steps=3, lr=0.1), adaptive_temperature(scores, return_tau=True)[1])
    truth = em_inf(scores.double(), n_steps=3, lr=0.1)  # always the PyTorch procedure, in float64
    finite = scores.isfinite()
    for name in ("cpp", "torch"):
        error = (results[name][0].double() - truth)[finite].abs()
        assert torch.quantile(error, 0.999) < (0.05 if dtype == torch.bfloat16 else 1e-4)
    assert torch.equal(results["cpp"][0][4:], results["torch"][0][4:])
    torch.testing.assert_close(results["cpp"][1], results["torch"][1], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("function", "kwargs", "match"),
    [
        (em_inf, {"threshold": -0.1}, "`threshold`"),
        (em_inf, {"n_steps": 0}, "`n_steps`"),
        (em_inf, {"n_steps": True}, "`n_steps`"),
        (em_inf, {"lr": 0.0}, "`lr`"),
        (em_inf, {"kl_weight": float("nan")}, "`kl_weight`"),
        (em_inf, {"optimizer": "rmsprop"}, "`optimizer` must be 'adam' or 'sgd'"),
        (adaptive_temperature, {"alpha": 0.0}, "`alpha`"),
        (adaptive_temperature, {"threshold": -1.0}, "`threshold`"),
        (adaptive_temperature, {"tau_min": 0.5, "tau_max": 0.5}, "`tau_min` .* smaller than `tau_max`"),
        (adaptive_temperature, {"tau_max": -1.0}, "`tau_max`"),
        (adaptive_temperature, {"max_iter": 1.5}, "`max_iter`"),
        (adaptive_temperature, {"tol": 0.0}, "`tol`"),
    ],
)
def test_argument_errors_name_the_argument(function, kwargs, match):
    with pytest.raises(ValueError, match=match):
        function(torch.zeros(2, 5), **kwargs)


@pytest.mark.parametrize("function", [em_inf, adaptive_temperature])
def test_bad_scores_raise(function):
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        function(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        function(torch.zeros(2, 3, dtype=torch.long))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            function(torch.tensor([[0.0, bad, 1.0]]))
