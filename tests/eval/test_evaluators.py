"""The evaluators for per-step evaluation score exactly what the harness's pieces compute."""

from __future__ import annotations

import math

import pytest

from em_hf.data.arithmetic import grade_last_integer, make_arithmetic_problems
from em_hf.eval import arithmetic_evaluator, benchmark_evaluator, load_benchmark
from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.generation.sampling import item_seed
from tests.helpers import make_tiny_llama, make_word_tokenizer


def _independent(model, tokenizer, method: str, seeds, n: int = 4, max_new_tokens: int = 3):
    problems = make_arithmetic_problems(n, seed=0)
    correct, entropy, count = 0, 0.0, 0
    for seed in seeds:
        completions, _ = generate_completions(
            model, tokenizer, [p.messages for p in problems], parse_method(method),
            max_new_tokens=max_new_tokens, batch_size=64, seed=seed, progress=False,
            seeds=[item_seed(seed, "arithmetic", p.id, 0) for p in problems],  # the harness's per-item seeds
        )  # fmt: skip
        for problem, completion in zip(problems, completions, strict=True):
            correct += grade_last_integer(completion.text, problem.answer)
            entropy += completion.mean_entropy
            count += 1
    return correct / count, entropy / count


@pytest.mark.parametrize(("method", "seeds"), [("greedy", (0,)), ("sample", (0, 1))])
def test_arithmetic_evaluator_matches_an_independent_loop(method, seeds):
    model, tokenizer = make_tiny_llama(sharpen=4.0), make_word_tokenizer()
    evaluate = arithmetic_evaluator(num_problems=4, method=method, seeds=seeds, max_new_tokens=3)
    metrics = evaluate(model, tokenizer)
    accuracy, entropy = _independent(model, tokenizer, method, seeds)
    assert set(metrics) == {"accuracy", "entropy"}
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-6)
    assert 0.0 < metrics["entropy"] <= math.log(128) + 1e-6
    assert evaluate(model, tokenizer) == metrics or method == "sample"


def test_benchmark_evaluator_takes_items_or_a_spec_and_rejects_empty_input():
    model, tokenizer = make_tiny_llama(sharpen=4.0), make_word_tokenizer()
    items = load_benchmark("arithmetic:n=3")
    by_items = benchmark_evaluator(items, max_new_tokens=3)(model, tokenizer)
    by_spec = benchmark_evaluator("arithmetic:n=3", max_new_tokens=3)(model, tokenizer)
    assert by_items == by_spec
    with pytest.raises(ValueError, match="`items` is empty"):
        benchmark_evaluator([])
    with pytest.raises(ValueError, match="`seeds` is empty"):
        arithmetic_evaluator(method="sample", seeds=())
