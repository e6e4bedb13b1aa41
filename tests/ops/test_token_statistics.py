"""token_statistics and linear_token_entropy(self_certainty=True): entropy, self-certainty
KL(U || p) and the sampled token's log-probability from one pass, against float64 references, on
both backends (tests/ops/conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.ops import linear_token_entropy, token_entropy, token_statistics

IGNORE = -100


def reference(logits: torch.Tensor, temperature: float, labels: torch.Tensor) -> torch.Tensor:
    """[rows, 3] float64 (H, KL(U || p), log p[y]) by the definitions, with Python floats: U is
    uniform over the finite entries; a row without finite entries has (0, 0, -inf)."""
    out = []
    for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True):
        finite = [(i, z / temperature) for i, z in enumerate(row) if z != -math.inf]
        if not finite:
            out.append((0.0, 0.0, -math.inf if label != IGNORE else 0.0))
            continue
        top = max(z for _, z in finite)
        total = sum(math.exp(z - top) for _, z in finite)
        log_p = {i: z - top - math.log(total) for i, z in finite}
        entropy = -sum(math.exp(lp) * lp for lp in log_p.values())
        n = len(finite)
        certainty = sum((1 / n) * (math.log(1 / n) - lp) for lp in log_p.values())  # KL(U || p)
        picked = 0.0 if label == IGNORE else log_p.get(label, -math.inf)
        out.append((entropy, certainty, picked))
    return torch.tensor(out, dtype=torch.float64)


def sample(vocab: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows at several scales, one with masked tokens and a masked label, one all -inf, one uniform,
    one single finite token; labels include -100."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(7, vocab, generator=generator) * torch.tensor(
        [[0.3], [1.0], [4.0], [2.0], [1], [1], [1]]
    )
    labels = torch.randint(0, vocab, (7,), generator=generator)
    if vocab > 2:
        logits[3, ::2] = -math.inf
        labels[3] = 0  # a masked label: log p = -inf, no gradient
    logits[4] = -math.inf
    logits[5] = 0.5  # uniform: KL(U || p) = 0
    logits[6, 1:] = -math.inf
    labels[6] = 0
    labels[1] = IGNORE
    return logits.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 7, 16, 2049])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_values_match_float64(dtype, vocab, temperature):
    logits, labels = sample(vocab, dtype)
    stats = token_statistics(logits, temperature, labels)
    got = torch.stack(list(stats), dim=-1).double()
    expected = reference(logits, temperature, labels)
    assert torch.equal(got.isinf(), expected.isinf()) and not got.isnan().any()
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], atol=2e-5, rtol=2e-5)
    assert stats.self_certainty[5].item() < 1e-6 and bool((stats.self_certainty >= 0).all())
    assert stats.entropy.dtype == torch.float32
    # the entropy is the one token_entropy returns
    assert torch.equal(stats.entropy, token_entropy(logits, temperature))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_float64_autograd(temperature):
    logits, labels = sample(300, torch.float32)
    weights = torch.randn(7, 3, generator=torch.Generator().manual_seed(9))
    leaf = logits.clone().requires_grad_(True)
    stats = token_statistics(leaf, temperature, labels)
    loss = sum((w * s).sum() for w, s in zip(weights.T, stats, strict=True) if s is not None)
    # the masked label's -inf is not part of a loss; its gradient is 0
    loss = loss - weights[3, 2] * stats.logprob[3]
    loss.backward()
    expected = torch.zeros(7, 300, dtype=torch.float64)
    for r in (0, 1, 2, 3, 5, 6):  # rows with mass
        row = logits[r].double()
        finite = row != -math.inf
        z = row[finite].clone().requires_grad_(True)
        log_p = torch.log_softmax(z / temperature, dim=-1)
        entropy = -(log_p.exp() * log_p).sum()
        certainty = torch.logsumexp(z / temperature, -1) - (z / temperature).mean() - math.log(z.numel())
        total = weights[r, 0] * entropy + weights[r, 1] * certainty
        index = torch.nonzero(finite).squeeze(-1)
        if labels[r] != IGNORE and bool(finite[labels[r]]):
            total = total + weights[r, 2] * log_p[(index == labels[r]).nonzero().item()]
        (grad,) = torch.autograd.grad(total, z)
        expected[r, finite] = grad
    torch.testing.assert_close(leaf.grad.double(), expected, atol=1e-6, rtol=1e-5)
    assert bool((leaf.grad[4] == 0).all()) and bool((leaf.grad[3, ::2] == 0).all())


def test_leading_dimensions_and_labels_are_checked():
    logits = torch.randn(2, 3, 11)
    labels = torch.randint(0, 11, (2, 3))
    stats = token_statistics(logits, labels=labels)
    assert stats.entropy.shape == stats.self_certainty.shape == stats.logprob.shape == (2, 3)
    assert token_statistics(logits).logprob is None
    with pytest.raises(ValueError, match=r"`labels` must have shape logits.shape\[:-1\] = \(2, 3\)"):
        token_statistics(logits, labels=labels[0])
    with pytest.raises(ValueError, match="found 11"):
        token_statistics(logits, labels=torch.full((2, 3), 11))
    with pytest.raises(TypeError, match="integer tensor"):
        token_statistics(logits, labels=labels.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_token_entropy_gives_the_same_statistics_from_the_lm_head(dtype):
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 5, 16, generator=generator).to(dtype)
    weight = (torch.randn(40, 16, generator=generator) * 0.8).to(dtype)
    bias = torch.randn(40, generator=generator).to(dtype)
    bias[::7] = -math.inf  # masked tokens: outside "uniform" too
    labels = torch.randint(0, 40, (3, 5), generator=generator)
    labels[0, 0] = IGNORE
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    stats = linear_token_entropy(
        *leaves[:2], bias=leaves[2], temperature=0.6, labels=labels, chunk_size=4, self_certainty=True
    )
    logits = (hidden.double() @ weight.double().T + bias.double()).to(dtype)
    expected = reference(logits.reshape(-1, 40), 0.6, labels.reshape(-1)).reshape(3, 5, 3)
    got = torch.stack(list(stats), dim=-1).double()
    tolerance = 2e-5 if dtype == torch.float32 else 0.05  # bf16: the matmul rounds the logits
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    # values and gradients equal token_statistics of the materialized logits
    naive_leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    naive = token_statistics(naive_leaves[0] @ naive_leaves[1].T + naive_leaves[2], 0.6, labels)
    weights = torch.randn(3, generator=generator)
    for outputs in (stats, naive):
        sum(w * o.float().sum() for w, o in zip(weights, outputs, strict=True)).backward()
    for got_leaf, naive_leaf in zip(leaves, naive_leaves, strict=True):
        grad_tolerance = 1e-4 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(
            got_leaf.grad.float(), naive_leaf.grad.float(), atol=grad_tolerance, rtol=grad_tolerance
        )
    assert linear_token_entropy(hidden, weight, self_certainty=True).logprob is None
