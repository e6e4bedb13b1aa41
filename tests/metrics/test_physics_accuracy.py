"""physics_accuracy against em_hf's UGPhysics grader applied item by item, and its input checks."""

from __future__ import annotations

import pytest

from em_hf.eval.grading import grade_physics
from em_hf.metrics import load

COMPLETIONS = [
    "$g$ is \\boxed{9.79\\,\\mathrm{m/s^2}}",  # 0.2% from 9.81: correct at 1%
    "\\boxed{9.5}",  # 3% off: wrong at 1%, correct at 5%
    "The answer is \\boxed{B}.",  # multiple choice, case-insensitive: correct
    "\\boxed{4.88 \\times 10^{23}}",  # correct
]
REFERENCES = ["9.81", "9.81", "b", "4.88e23"]
EXPECTED = [True, False, True, True]


@pytest.fixture(scope="module")
def metric():
    return load("physics_accuracy")


def test_matches_grade_physics_item_by_item(metric):
    assert [grade_physics(c, r) for c, r in zip(COMPLETIONS, REFERENCES, strict=True)] == EXPECTED
    result = metric.compute(predictions=COMPLETIONS, references=REFERENCES, return_per_item=True)
    assert result == {"physics_accuracy": 0.75, "num_correct": 3, "num_items": 4, "correct": EXPECTED}


def test_rel_tol_is_passed_to_the_grader(metric):
    result = metric.compute(
        predictions=COMPLETIONS, references=REFERENCES, rel_tol=0.05, return_per_item=True
    )
    assert result["correct"] == [
        grade_physics(c, r, rel_tol=0.05) for c, r in zip(COMPLETIONS, REFERENCES, strict=True)
    ]
    assert result["physics_accuracy"] == 1.0
    with pytest.raises(ValueError, match="`rel_tol`"):
        metric.compute(predictions=COMPLETIONS, references=REFERENCES, rel_tol=1.5)


def test_several_answers_per_item(metric):
    completions = ["\\boxed{2, 1}", "\\boxed{1}\\boxed{3}", "\\boxed{1}"]
    references = [["1", "2"], ["1", "2"], ["1", "1"]]
    expected = [grade_physics(c, r) for c, r in zip(completions, references, strict=True)]
    assert expected == [True, False, False]
    result = metric.compute(predictions=completions, references=references, return_per_item=True)
    assert result["correct"] == expected
    assert result["physics_accuracy"] == pytest.approx(1 / 3)


def test_empty_predictions(metric):
    with pytest.raises(ValueError, match="`predictions` is empty"):
        metric.compute(predictions=[], references=[])


def test_length_mismatch(metric):
    with pytest.raises(ValueError, match="`predictions` and `references`"):
        metric.compute(predictions=["\\boxed{1}"], references=["1", "2"])
