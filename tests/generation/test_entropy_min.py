import math

import pytest
import torch
import torch.nn.functional as F

from em_hf.generation import EntropyMinLogitsProcessor
from em_hf.ops import token_entropy


def reference_em_inf(logits, threshold=0.3, n_steps=3, lr=0.1, kl_weight=0.001):
    """The reference procedure of SPEC.md for ONE row: torch.optim.Adam on the autograd gradient of
    H + kl_weight * F.kl_div(p.log(), p_orig, reduction="batchmean"), stopping when H < threshold."""
    z = logits.detach().clone().reshape(1, -1).requires_grad_(True)
    p_orig = torch.softmax(logits.reshape(1, -1), dim=-1).detach()
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(n_steps):
        p = torch.softmax(z, dim=-1)
        entropy = -(p * p.log()).sum()
        if entropy < threshold:
            break
        loss = entropy + kl_weight * F.kl_div(p.log(), p_orig, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return z.detach().reshape(-1)


def random_rows(batch=6, vocab=500, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])[:batch].repeat(math.ceil(batch / 6))[:batch]
    return (
        torch.randn(batch, vocab, generator=generator, dtype=dtype) * scales[:, None].to(dtype)
    ).contiguous()


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"n_steps": 10, "lr": 0.5, "kl_weight": 0.05, "threshold": 0.1},
        {"n_steps": 15, "lr": 0.2, "kl_weight": 0.0, "threshold": 0.45},
    ],
)
def test_batch_one_matches_reference_procedure_float32(settings):
    processor = EntropyMinLogitsProcessor(**settings)
    for row in random_rows():
        got = processor(None, row[None])[0]
        expected = reference_em_inf(row, **settings)
        assert torch.isfinite(expected).all()  # the reference itself breaks once p underflows to 0
        assert (got - expected).abs().max().item() < 1e-3


def test_batch_one_matches_reference_procedure_float64_tightly():
    settings = {"n_steps": 10, "lr": 0.3, "kl_weight": 0.01}
    processor = EntropyMinLogitsProcessor(**settings)
    for row in random_rows(dtype=torch.float64, seed=1):
        got = processor(None, row[None])[0]
        torch.testing.assert_close(got, reference_em_inf(row, **settings), atol=1e-9, rtol=0)


def test_rows_of_a_batch_equal_their_batch_one_result():
    rows = random_rows(batch=12, seed=2)
    rows[3] = torch.zeros(500)
    rows[3, 7] = 40.0  # confident row, below the threshold from the start
    processor = EntropyMinLogitsProcessor(n_steps=8, lr=0.3, threshold=0.3)
    batched = processor(None, rows)
    for i in range(rows.shape[0]):
        torch.testing.assert_close(batched[i], processor(None, rows[i : i + 1])[0], atol=1e-6, rtol=0)


def test_each_row_stops_on_its_own():
    # Row 0 crosses the threshold after a few steps and must stop there; row 1 (nearly uniform)
    # takes all 20 steps. Each equals the reference run alone.
    near = torch.zeros(1, 50)
    near[0, 0] = 5.5
    far = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) * 0.1
    processor = EntropyMinLogitsProcessor(threshold=0.3, n_steps=20, lr=0.5)
    out = processor(None, torch.cat([near, far]))
    final_near = token_entropy(out[:1]).item()
    assert 0.1 < final_near <= 0.3  # stopped right after crossing, not driven towards 0
    no_stop = EntropyMinLogitsProcessor(threshold=0.0, n_steps=20, lr=0.5)(None, near)
    assert token_entropy(no_stop).item() < 0.01
    torch.testing.assert_close(
        out[0], reference_em_inf(near[0], threshold=0.3, n_steps=20, lr=0.5), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        out[1], reference_em_inf(far[0], threshold=0.3, n_steps=20, lr=0.5), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_entropy_never_increases(optimizer):
    rows = random_rows(batch=24, seed=3)
    out = EntropyMinLogitsProcessor(optimizer=optimizer, n_steps=5)(None, rows)
    assert (token_entropy(out) <= token_entropy(rows) + 1e-6).all()
    assert (token_entropy(out) < token_entropy(rows)).any()


def test_sgd_never_changes_the_argmax_proposition_1():
    rows = random_rows(batch=24, seed=4)
    out = EntropyMinLogitsProcessor(optimizer="sgd", n_steps=50, lr=5.0, threshold=0.0)(None, rows)
    assert not torch.equal(out, rows)
    assert torch.equal(out.argmax(-1), rows.argmax(-1))


def test_rows_at_or_below_threshold_are_returned_unchanged():
    confident = torch.full((3, 100), -5.0)
    confident[:, 0] = 10.0
    assert (token_entropy(confident) <= 0.3).all()
    out = EntropyMinLogitsProcessor()(None, confident)
    assert torch.equal(out, confident)
    mixed = torch.cat([confident, torch.randn(1, 100, generator=torch.Generator().manual_seed(0))])
    out = EntropyMinLogitsProcessor()(None, mixed)
    assert torch.equal(out[:3], confident)
    assert not torch.equal(out[3], mixed[3])


def test_masked_entries_stay_masked_and_single_token_row_works():
    rows = torch.randn(3, 30, generator=torch.Generator().manual_seed(0))
    rows[0, 1:] = -math.inf  # all but one masked: entropy 0, untouched
    rows[1, ::2] = -math.inf  # half masked
    rows[2, :28] = -math.inf  # two finite tokens, entropy ~0.67 > threshold
    rows[2, 28:] = torch.tensor([0.0, 0.3])
    out = EntropyMinLogitsProcessor(n_steps=5)(None, rows)
    assert torch.equal(out[0], rows[0])
    assert torch.equal(torch.isinf(out), torch.isinf(rows))
    assert torch.isfinite(out[~torch.isinf(rows)]).all()
    assert token_entropy(out[2:]).item() < token_entropy(rows[2:]).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_output_keeps_input_dtype_and_works_under_no_grad(dtype):
    rows = random_rows(batch=4, seed=5).to(dtype)
    with torch.inference_mode():
        out = EntropyMinLogitsProcessor()(None, rows)
    assert out.dtype == dtype and out.shape == rows.shape and out.device == rows.device
    assert (token_entropy(out) <= token_entropy(rows) + 1e-3).all()


def test_input_is_not_modified():
    rows = random_rows(batch=4, seed=6)
    copy = rows.clone()
    EntropyMinLogitsProcessor()(None, rows)
    assert torch.equal(rows, copy)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.5}, "n_steps"),
        ({"lr": 0.0}, "lr"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"optimizer": "rmsprop"}, "optimizer"),
    ],
)
def test_out_of_range_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyMinLogitsProcessor(**kwargs)


def test_bad_scores_raise():
    processor = EntropyMinLogitsProcessor()
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        processor(None, torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        processor(None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        processor(None, torch.tensor([[0.0, float("nan"), 1.0]]))
