"""The evaluation path on the real default model (SmolLM2-135M-Instruct): short, marked slow."""

from __future__ import annotations

import pytest

from em_hf.eval import load_benchmark
from em_hf.eval.methods import run_items
from em_hf.eval.scoring import final_answer
from em_hf.generation.decoding import parse_method


@pytest.mark.slow
def test_default_model_answers_arithmetic_with_accounting():
    from em_hf.models import load_default_model

    model, tokenizer = load_default_model()
    items = load_benchmark("arithmetic:n=4")
    results = run_items(model, tokenizer, items, parse_method("sc:2"), max_new_tokens=12, batch_size=8)
    params = sum(p.numel() for p in model.parameters())
    assert 100e6 < params < 200e6  # 135M, the tied embedding counted once
    for item, result in zip(items, results, strict=True):
        assert result.trajectories == 2 and 2 <= result.tokens <= 24
        assert result.flops == 2 * params * (result.tokens + result.prompt_tokens)
        assert result.prompt_tokens > 2 * len(item.question.split())  # the chat template adds tokens
        assert 0.0 <= result.mean_entropy < 11.0  # below log(49152) = 10.8
        assert result.correct == (final_answer(item, result.completion) == item.reference)
