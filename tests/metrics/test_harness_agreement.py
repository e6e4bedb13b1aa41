"""The packaged `evaluate` metrics and the evaluation harness give the same verdicts on the same
completions of real benchmark items: the harness grades an item with `grade_item` when it is generated
(what `em-hf eval`'s report counts), the metrics grade a batch (what `compute_metrics` reports)."""

from __future__ import annotations

import pytest

from em_hf.eval import grade_item, load_benchmark
from em_hf.eval.report import summarize
from em_hf.eval.sandbox import SandboxUnavailableError, check_sandbox
from em_hf.metrics import load


def _completions(items, right):
    """Item i gets a boxed right answer when ``i % 3 == 0``, another item's answer when ``i % 3 == 1``,
    and no answer at all otherwise."""
    out = []
    for i, item in enumerate(items):
        if i % 3 == 0:
            out.append(f"So the answer is $\\boxed{{{right(item)}}}$.")
        elif i % 3 == 1:
            out.append(f"Therefore \\boxed{{{right(items[(i + 1) % len(items)])}}}")
        else:
            out.append("I cannot solve this one.")
    return out


def _records(items, completions):
    """The harness's per-item records for one greedy run, graded as `run_items` grades them."""
    return [
        {
            "benchmark": item.benchmark,
            "method": "greedy",
            "seed": 0,
            "item_id": item.id,
            "correct": grade_item(item, text).correct,
            "tokens": 1,
            "seconds": 1.0,
            "flops": 1.0,
            "mean_entropy": 1.0,
        }
        for item, text in zip(items, completions, strict=True)
    ]


def test_math_accuracy_equals_the_harness_on_math500(benchmarks_dir):
    items = load_benchmark("math500", limit=30)
    completions = _completions(items, lambda item: item.reference)
    (summary,) = summarize(_records(items, completions))
    result = load("math_accuracy").compute(
        predictions=completions, references=[item.reference for item in items], return_per_item=True
    )
    assert result["correct"] == [grade_item(i, c).correct for i, c in zip(items, completions, strict=True)]
    assert result["math_accuracy"] == pytest.approx(summary.accuracy)
    assert 0 < summary.accuracy < 1


def test_physics_accuracy_equals_the_harness_on_ugphysics(benchmarks_dir):
    items = load_benchmark("ugphysics", limit=30)
    completions = _completions(items, lambda item: (item.references or (item.reference,))[0])
    (summary,) = summarize(_records(items, completions))
    result = load("physics_accuracy").compute(
        predictions=completions,
        references=[list(item.references) or [item.reference] for item in items],
        return_per_item=True,
    )
    assert result["correct"] == [grade_item(i, c).correct for i, c in zip(items, completions, strict=True)]
    assert result["physics_accuracy"] == pytest.approx(summary.accuracy)
    assert 0 < summary.accuracy < 1


def test_code_pass_at_k_equals_the_harness_on_leetcode(benchmarks_dir):
    try:
        check_sandbox()
    except SandboxUnavailableError as error:
        pytest.skip(f"bubblewrap cannot run here: {error}")
    item = load_benchmark("leetcode", limit=1)[0]
    solution = (
        "class Solution:\n"
        "    def minimumPushes(self, word: str) -> int:\n"
        "        return sum(i // {d} + 1 for i in range(len(word)))\n"
    )
    completions = [f"```python\n{solution.format(d=d)}```" for d in (8, 9, 8)]
    harness = [grade_item(item, text).status for text in completions]
    result = load("code_pass_at_k").compute(
        predictions=[completions], references=[item.tests], k=[1, 3], return_per_item=True
    )
    assert harness == ["passed", "failed", "passed"]
    assert result["statuses"] == [harness]
    assert result["pass@1"] == pytest.approx(2 / 3) and result["pass@3"] == 1.0
