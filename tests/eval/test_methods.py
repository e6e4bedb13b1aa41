"""Decoding strategies on a tiny model, checked against independent generate_completions calls:
self-consistency (n trajectories, majority vote), iterative refinement (the previous answer fed
back), and the per-item accounting (tokens, prompt tokens, FLOPs = 2 P D, entropy)."""

from __future__ import annotations

from collections import Counter

import pytest

from em_hf.eval import load_benchmark
from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.methods import REFINE_INSTRUCTIONS, majority_vote, run_items
from em_hf.eval.scoring import final_answer
from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.generation.prompts import render_prompts
from em_hf.generation.sampling import item_seed

MAX_NEW = 6


@pytest.fixture
def items() -> list[BenchmarkItem]:
    return load_benchmark("arithmetic:n=5")


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None]) == 1
    assert majority_vote(["3", "4", "4", "3"]) == 0  # a tie goes to the answer seen first
    assert majority_vote([None, "7"]) == 1
    assert majority_vote([None, None]) == 0


def _prompt_lengths(tokenizer, prompts) -> list[int]:
    return [len(ids) for ids in render_prompts(tokenizer, prompts)]


def test_single_trajectory_accounting(sharp_llama, word_tokenizer, items):
    method = parse_method("greedy")
    results = run_items(sharp_llama, word_tokenizer, items, method, max_new_tokens=MAX_NEW, batch_size=2)
    expected, _ = generate_completions(
        sharp_llama, word_tokenizer, [i.prompt for i in items], method, max_new_tokens=MAX_NEW, progress=False
    )
    params = sharp_llama.num_parameters()
    for result, item, completion, length in zip(
        results, items, expected, _prompt_lengths(word_tokenizer, [i.prompt for i in items]), strict=True
    ):
        assert result.completion == completion.text
        assert (result.tokens, result.prompt_tokens) == (completion.num_tokens, length)
        assert result.flops == 2 * params * (length + completion.num_tokens)
        assert result.mean_entropy == pytest.approx(completion.mean_entropy)
        assert result.correct == (final_answer(item, completion.text) == item.reference)
        assert result.trajectories == 1 and result.item_id == item.id and result.reference == item.reference


def test_self_consistency_votes_over_n_trajectories(sharp_llama, word_tokenizer, items):
    with pytest.MonkeyPatch.context() as patch:  # flatten the model so that the samples differ
        patch.setattr(sharp_llama.lm_head.weight, "data", sharp_llama.lm_head.weight.data / 40)
        method = parse_method("sc:3")
        results = run_items(
            sharp_llama, word_tokenizer, items, method, seed=5, max_new_tokens=MAX_NEW, batch_size=64
        )
        samples, _ = generate_completions(
            sharp_llama,
            word_tokenizer,
            [i.prompt for i in items for _ in range(3)],
            method,
            max_new_tokens=MAX_NEW,
            batch_size=64,
            seed=5,
            progress=False,
            seeds=[item_seed(5, i.benchmark, i.id, k) for i in items for k in range(3)],
        )
    assert len({c.text for c in samples}) > len(items)  # not all identical
    params = sharp_llama.num_parameters()
    for index, (item, result) in enumerate(zip(items, results, strict=True)):
        group = samples[3 * index : 3 * index + 3]
        answers = [final_answer(item, c.text) for c in group]
        assert result.answers == answers
        counts = Counter(a for a in answers if a is not None)
        if counts:
            top = max(counts.values())
            assert counts[result.answer] == top
            assert result.completion == next(
                c.text for c, a in zip(group, answers, strict=True) if a == result.answer
            )
        assert result.trajectories == 3
        assert result.tokens == sum(c.num_tokens for c in group)
        assert result.flops == 2 * params * sum(c.num_tokens + c.prompt_tokens for c in group)
        weighted = sum(c.mean_entropy * c.num_tokens for c in group) / result.tokens
        assert result.mean_entropy == pytest.approx(weighted)


def test_refinement_feeds_the_previous_answer_back(sharp_llama, word_tokenizer, items):
    method = parse_method("greedy-refine:2")
    results = run_items(sharp_llama, word_tokenizer, items, method, max_new_tokens=MAX_NEW, batch_size=8)
    first, _ = generate_completions(
        sharp_llama, word_tokenizer, [i.prompt for i in items], method, max_new_tokens=MAX_NEW, progress=False
    )
    conversations = [
        [
            *i.prompt,
            {"role": "assistant", "content": c.text},
            {"role": "user", "content": REFINE_INSTRUCTIONS["arithmetic"]},
        ]
        for i, c in zip(items, first, strict=True)
    ]
    second, _ = generate_completions(
        sharp_llama, word_tokenizer, conversations, method, max_new_tokens=MAX_NEW, progress=False
    )
    lengths = _prompt_lengths(word_tokenizer, conversations)
    for result, a, b, length in zip(results, first, second, lengths, strict=True):
        assert result.completion == b.text  # the last round is graded
        assert result.trajectories == 2
        assert result.tokens == a.num_tokens + b.num_tokens
        assert result.prompt_tokens == a.prompt_tokens + length  # round 2 re-reads the conversation
    assert any(r.completion != a.text for r, a in zip(results, first, strict=True))


def test_self_consistency_refuses_code(sharp_llama, word_tokenizer):
    item = BenchmarkItem(
        "leetcode", "x", "code", "q", [{"role": "user", "content": "q"}], tests="assert True"
    )
    with pytest.raises(ValueError, match="does not apply to code"):
        run_items(sharp_llama, word_tokenizer, [item], parse_method("sc:2"), max_new_tokens=2)
    with pytest.raises(ValueError, match="code task"):
        final_answer(item, "```python\nx = 1\n```")


def test_empty_items_rejected(sharp_llama, word_tokenizer):
    with pytest.raises(ValueError, match="`items` is empty"):
        run_items(sharp_llama, word_tokenizer, [], parse_method("greedy"))
