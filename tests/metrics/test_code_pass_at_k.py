"""code_pass_at_k: the estimator against its closed form and a brute-force count, and the metric
against real sandbox runs (a passing, a failing, a looping and a code-less candidate)."""

from __future__ import annotations

import itertools
import math

import pytest

from em_hf.eval.sandbox import extract_code, run_code
from em_hf.metrics import load, pass_at_k

TESTS = "assert Solution().add(1, 2) == 3\nassert Solution().add(-1, 1) == 0\n"
GOOD = "Here it is:\n```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"
WRONG = "```python\nclass Solution:\n    def add(self, a, b):\n        return a - b\n```"
LOOPS = "```python\nclass Solution:\n    def add(self, a, b):\n        while True:\n            pass\n```"
NO_CODE = "I would add the two numbers."
OTHER_TESTS = "assert double(4) == 8\n"
DOUBLE = "```python\ndef double(x):\n    return 2 * x\n```"


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def brute_force(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n candidates (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.fixture(scope="module")
def metric():
    return load("code_pass_at_k")


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_closed_form_and_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            value = pass_at_k(n, c, k)
            assert value == pytest.approx(closed_form(n, c, k), abs=1e-15)
            assert value == pytest.approx(brute_force(n, c, k), abs=1e-15)


def test_pass_at_k_for_large_n_stays_exact():
    # C(200, 100) overflows a float; the estimate must still be the closed form's value.
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - (100 * 99 * 98) / (200 * 199 * 198), rel=1e-14)
    assert pass_at_k(200, 0, 100) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize(
    ("args", "argument"),
    [((3, 4, 1), "num_correct"), ((3, 1, 4), "k"), ((0, 0, 1), "num_samples"), ((3, 1, 0), "k")],
)
def test_pass_at_k_bad_arguments(args, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        pass_at_k(*args)


def test_metric_runs_the_sandbox_and_averages_pass_at_k(metric):
    predictions = [[GOOD, WRONG, LOOPS, NO_CODE], [DOUBLE, DOUBLE.replace("2 * x", "x + 1"), WRONG, DOUBLE]]
    references = [TESTS, OTHER_TESTS]
    statuses = [
        [run_code(extract_code(c), t, timeout_s=1.0).status for c in p]
        for p, t in zip(predictions, references, strict=True)
    ]
    assert statuses == [["passed", "failed", "timeout", "error"], ["passed", "failed", "failed", "passed"]]
    result = metric.compute(
        predictions=predictions, references=references, k=[1, 2, 4], timeout_s=1.0, return_per_item=True
    )
    assert result["statuses"] == statuses
    assert result["num_passed"] == [1, 2]
    for k in (1, 2, 4):
        expected = (closed_form(4, 1, k) + closed_form(4, 2, k)) / 2
        assert result[f"pass@{k}"] == pytest.approx(expected, abs=1e-15)
    assert result["pass@1"] == pytest.approx(0.375)


def test_extract_code_false_runs_the_prediction_as_is(metric):
    code = "def double(x):\n    return 2 * x\n"
    result = metric.compute(predictions=[[code, DOUBLE]], references=[OTHER_TESTS], extract_code=False, k=1)
    assert result == {"pass@1": 0.5}  # the fenced completion is not valid Python on its own
    assert metric.compute(predictions=[[code, DOUBLE]], references=[OTHER_TESTS]) == {"pass@1": 0.5}


def test_k_larger_than_the_samples_names_k(metric):
    with pytest.raises(
        ValueError, match=r"`k` = 3 is larger than the number of candidates of problem 1 \(2\)"
    ):
        metric.compute(predictions=[[GOOD] * 3, [GOOD] * 2], references=[TESTS, TESTS], k=[1, 3])


@pytest.mark.parametrize("k", [0, [], [1, 0], "1", True])
def test_bad_k(metric, k):
    with pytest.raises(ValueError, match="`k`"):
        metric.compute(predictions=[[GOOD]], references=[TESTS], k=k)


def test_empty_predictions(metric):
    with pytest.raises(ValueError, match="`predictions` is empty"):
        metric.compute(predictions=[], references=[])
    with pytest.raises(ValueError, match=r"`predictions\[1\]` is empty"):
        metric.compute(predictions=[[GOOD], []], references=[TESTS, TESTS])


def test_length_mismatch(metric):
    with pytest.raises(ValueError, match=r"`predictions` and `references`.*1 predictions and 2 references"):
        metric.compute(predictions=[[GOOD]], references=[TESTS, TESTS])


def test_one_string_per_problem_is_refused(metric):
    with pytest.raises(ValueError, match=r"`predictions\[0\]` must be the list of candidate completions"):
        metric.compute(predictions=[GOOD], references=[TESTS])


def test_isolation_is_passed_to_the_sandbox(metric, monkeypatch, recwarn):
    """isolation="process" runs where bubblewrap is missing (with run_code's warning); the default
    refuses there, naming the fix; a bad value is refused before anything runs."""
    from em_hf.eval import _sandbox_bwrap
    from em_hf.eval.sandbox import SandboxUnavailableError

    monkeypatch.setenv("PATH", "/nonexistent")
    _sandbox_bwrap.probe.cache_clear()
    try:
        result = metric.compute(predictions=[[GOOD, WRONG]], references=[TESTS], isolation="process")
        assert result == {"pass@1": 0.5}
        with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
            metric.compute(predictions=[[GOOD]], references=[TESTS])
    finally:
        _sandbox_bwrap.probe.cache_clear()
    with pytest.raises(ValueError, match="`isolation`"):
        metric.compute(predictions=[[GOOD]], references=[TESTS], isolation="none")
