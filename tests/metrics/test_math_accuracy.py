"""math_accuracy against em_hf's grader applied item by item, and its input checks."""

from __future__ import annotations

import pytest

from em_hf.eval.grading import grade_math
from em_hf.metrics import load

COMPLETIONS = [
    "We get $x = 2$, so the answer is \\boxed{\\frac{1}{2}}.",  # 1/2 = 0.5: correct
    "The total is 142.",  # last number, no box: correct unless strict
    "\\boxed{7} ... wait, \\boxed{8}",  # the last box counts: wrong
    "I do not know.",  # no answer: wrong
    "So $\\boxed{-3}$",  # correct
]
REFERENCES = ["0.5", 142.0, "7", "4", "-3"]
EXPECTED = [True, True, False, False, True]  # by hand, from the grading rule


@pytest.fixture(scope="module")
def metric():
    return load("math_accuracy")


def test_matches_grade_math_item_by_item(metric):
    by_hand = [grade_math(c, r) for c, r in zip(COMPLETIONS, REFERENCES, strict=True)]
    assert by_hand == EXPECTED
    result = metric.compute(predictions=COMPLETIONS, references=REFERENCES, return_per_item=True)
    assert result == {
        "math_accuracy": sum(EXPECTED) / len(EXPECTED),
        "num_correct": 3,
        "num_items": 5,
        "correct": EXPECTED,
    }


def test_strict_requires_a_box(metric):
    result = metric.compute(predictions=COMPLETIONS, references=REFERENCES, strict=True, return_per_item=True)
    assert result["correct"] == [
        grade_math(c, r, strict=True) for c, r in zip(COMPLETIONS, REFERENCES, strict=True)
    ]
    assert result["correct"] == [True, False, False, False, True]
    assert result["math_accuracy"] == pytest.approx(0.4)


def test_number_references_read_like_the_grader(metric):
    # evaluate stores strings; numbers are converted as grade_math reads them (142.0 -> "142").
    result = metric.compute(
        predictions=["\\boxed{142}", "\\boxed{0.25}", "\\boxed{3}"], references=[142.0, 0.25, 4]
    )
    assert result["num_correct"] == 2


def test_add_batch_accumulates(metric):
    metric.add_batch(predictions=COMPLETIONS[:2], references=REFERENCES[:2])
    metric.add(prediction=COMPLETIONS[2], reference=REFERENCES[2])
    metric.add_batch(predictions=COMPLETIONS[3:], references=REFERENCES[3:])
    assert metric.compute()["num_correct"] == 3


def test_empty_predictions(metric):
    with pytest.raises(ValueError, match="`predictions` is empty"):
        metric.compute(predictions=[], references=[])


def test_length_mismatch(metric):
    with pytest.raises(ValueError, match=r"`predictions` and `references`.*2 predictions and 3 references"):
        metric.compute(predictions=["1", "2"], references=["1", "2", "3"])


def test_a_single_string_is_not_a_batch(metric):
    with pytest.raises(TypeError, match="`predictions` must be a list"):
        metric.compute(predictions="\\boxed{1}", references=["1"])


def test_bad_strict(metric):
    with pytest.raises(ValueError, match="`strict`"):
        metric.compute(predictions=["1"], references=["1"], strict="yes")
