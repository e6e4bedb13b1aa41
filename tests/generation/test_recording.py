"""TokenEntropyRecorder and completion_mask: entropy along the tokens that ``generate`` produced."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.generation.recording import TokenEntropyRecorder, completion_mask


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Independent float64 entropy per row: -sum p log p over the finite entries."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    terms = torch.where(torch.isfinite(log_p), log_p.exp() * log_p, torch.zeros_like(log_p))
    return -terms.sum(-1)


def test_completion_mask_keeps_the_first_eos_and_drops_what_follows():
    ids = torch.tensor(
        [
            [5, 6, 2, 7, 2],  # EOS at 2: kept, then dropped
            [2, 5, 5, 5, 5],  # EOS first
            [5, 6, 7, 8, 9],  # no EOS: all kept
            [5, 2, 2, 2, 2],  # padded with EOS after finishing
        ]
    )
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert torch.equal(completion_mask(ids, 2), expected)
    assert completion_mask(ids, 2).dtype == torch.long


def test_completion_mask_with_several_eos_ids():
    ids = torch.tensor([[5, 9, 6, 2], [5, 6, 2, 9], [5, 6, 7, 8]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(completion_mask(ids, [2, 9]), expected)
    assert torch.equal(completion_mask(ids, (9, 2)), expected)
    assert torch.equal(completion_mask(ids, iter([2, 9])), expected)


def test_completion_mask_without_eos_keeps_everything():
    ids = torch.tensor([[5, 2, 2], [1, 1, 1]])
    assert torch.equal(completion_mask(ids, None), torch.ones(2, 3, dtype=torch.long))


def test_recorder_records_entropy_per_row_and_step_and_passes_scores_through():
    recorder = TokenEntropyRecorder()
    torch.manual_seed(0)
    steps = [torch.randn(3, 11) * 4 for _ in range(4)]
    for scores in steps:
        out = recorder(torch.zeros(3, 1, dtype=torch.long), scores)
        assert out is scores or torch.equal(out, scores)
    expected = torch.stack([_entropy(s) for s in steps], dim=1)
    assert recorder.entropies.shape == (3, 4)
    assert recorder.entropies.dtype == torch.float32
    torch.testing.assert_close(recorder.entropies.double(), expected, atol=1e-5, rtol=0)
    recorder.reset()
    with pytest.raises(RuntimeError, match="recorded nothing"):
        _ = recorder.entropies


def test_recorder_handles_masked_logits():
    """-inf entries (e.g. from a top-k or bad-words processor) have zero probability, not NaN."""
    recorder = TokenEntropyRecorder()
    scores = torch.tensor([[0.0, 0.0, -math.inf, -math.inf], [1.0, -math.inf, -math.inf, -math.inf]])
    recorder(torch.zeros(2, 1, dtype=torch.long), scores)
    torch.testing.assert_close(recorder.entropies[:, 0], torch.tensor([math.log(2), 0.0]), atol=1e-6, rtol=0)
