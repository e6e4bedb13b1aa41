"""Math and physics graders: synthetic cases with known answers, and the gold solutions of real
benchmark items (each must grade as correct against its own reference and wrong against another)."""

from __future__ import annotations

import itertools

import pytest

from em_hf.eval import grade_math, grade_physics, load_benchmark
from em_hf.eval.grading import answers_equivalent, numeric_value, split_top_level
from em_hf.utils.answers import extract_all_boxed, extract_boxed, normalize_answer


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", "0.5", True),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}", True),
        (r"first \boxed{3}, then corrected: \boxed{4}", "4", True),  # the LAST box counts
        (r"first \boxed{4}, then corrected: \boxed{3}", "4", False),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True),
        (r"\boxed{{1,2}} nested \boxed{\{1, 2\}}", r"\{1,2\}", True),
        (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
        (r"\boxed{x^2+2x}", "(x+1)^2", False),
        (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", True),
        ("The answer is 142.", 142.0, True),  # AMC references are floats; no box: the last number
        ("The answer is 142.", 141.0, False),
        (r"\boxed{1,000}", "1000", True),
        (r"\boxed{073}", "73", True),
        (r"\textbf{(023) } is \boxed{\textbf{(023) }}", "23", True),
        (r"so \framebox{204} minutes", "204", True),
        (r"\boxed{2.88e-19}", "1.325e-27", False),  # math-verify alone rounds both to 0
        (r"\boxed{2.880e-19}", "2.88e-19", True),
        ("no answer here", "4", False),
        (r"\boxed{0.3333}", r"\frac13", False),
    ],
)
def test_grade_math_synthetic(completion, reference, expected):
    assert grade_math(completion, reference) is expected


def test_grade_math_strict_needs_a_box():
    assert grade_math("the answer is 4", "4")
    assert not grade_math("the answer is 4", "4", strict=True)
    assert grade_math(r"\boxed{4}", "4", strict=True)


@pytest.mark.parametrize(
    ("reference", "error"), [("", ValueError), (None, TypeError), (float("nan"), ValueError)]
)
def test_grade_math_rejects_bad_references(reference, error):
    with pytest.raises(error, match="reference"):
        grade_math(r"\boxed{1}", reference)


def test_extract_all_boxed_in_order_and_not_nested():
    text = r"a \boxed{1} b \boxed{\frac{1}{2}} c \boxed{\boxed{5}} \fbox{x} \boxed{unclosed"
    assert extract_all_boxed(text) == ["1", r"\frac{1}{2}", r"\boxed{5}", "x"]
    assert extract_boxed(text) == "x"


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("073", "73"),
        (r"\textbf{(073)}", "73"),
        ("-007.10", "-7.1"),
        (".5", "0.5"),
        ("(1,2)", "(1,2)"),
        (r"\text{a}\text{b}", r"\text{a}\text{b}"),
        ("1,000", "1000"),
        ("3.0", "3"),
        ("-0", "0"),
    ],
)
def test_normalize_answer(answer, normalized):
    assert normalize_answer(answer) == normalized


def test_numeric_value():
    assert numeric_value(r"4.88 \times 10^{23}") == pytest.approx(4.88e23)
    assert numeric_value(r"\frac{3}{4}") == pytest.approx(0.75)
    assert numeric_value(r"2\sqrt{2}") == pytest.approx(2 * 2**0.5)
    assert numeric_value("x+1") is None
    assert numeric_value("-12") == -12.0


def test_split_top_level():
    assert split_top_level(r"50\%, f(1,2), \{a,b\}") == [r"50\%", "f(1,2)", r"\{a,b\}"]


@pytest.mark.parametrize(
    ("completion", "references", "expected"),
    [
        (
            r"\boxed{4.9 \times 10^{23} \text{m}^{-3}}",
            [r"4.88 \times 10^{23}"],
            True,
        ),  # within 1%, unit stripped
        (r"\boxed{5.2 \times 10^{23}}", [r"4.88 \times 10^{23}"], False),
        (r"\boxed{4.88e23}", [r"4.88 \times 10^{23}"], True),
        (r"\boxed{2, 50\%}", [r"50\%", "2"], True),  # several answers, any order
        (r"\boxed{2} and \boxed{1}", ["1", "2"], True),
        (r"\boxed{2} and \boxed{2}", ["1", "2"], False),  # each reference needs its own answer
        (r"\boxed{B}", ["b"], True),  # multiple choice
        (r"\boxed{Yes}", ["No"], False),
        (r"\boxed{\nu = \frac{2eV}{h}}", [r"\nu = \frac{2eV}{h}"], True),
    ],
)
def test_grade_physics_synthetic(completion, references, expected):
    assert grade_physics(completion, references) is expected


def test_grade_physics_relative_tolerance_is_an_argument():
    assert not grade_physics(r"\boxed{103}", ["100"])
    assert grade_physics(r"\boxed{103}", ["100"], rel_tol=0.05)
    with pytest.raises(ValueError, match="rel_tol"):
        grade_physics(r"\boxed{1}", ["1"], rel_tol=2.0)
    with pytest.raises(ValueError, match="references"):
        grade_physics(r"\boxed{1}", [])


def test_answers_equivalent_is_not_lenient_on_different_symbols():
    assert not answers_equivalent("x+1", "y+1")
    assert answers_equivalent("x+1", "1+x")


# ---------------------------------------------------------------- real benchmark items


@pytest.mark.parametrize(("name", "count"), [("math500", 120), ("minerva", 60), ("aime", 90)])
def test_gold_solutions_grade_correct(benchmarks_dir, name, count):
    """The boxed answer of each gold solution must grade as correct against its reference (the full
    sets: examples/eval_grader_agreement.py), and as wrong against the next item's reference."""
    items = load_benchmark(name, limit=count)
    rejected = [i.id for i in items if not grade_math(i.metadata["solution"], i.reference)]
    assert rejected == []
    shifted = itertools.pairwise(items)
    accepted = [
        (a.id, b.id)
        for a, b in shifted
        if normalize_answer(a.reference) != normalize_answer(b.reference)
        and grade_math(a.metadata["solution"], b.reference)
    ]
    assert accepted == []


def test_ugphysics_references_grade_themselves(benchmarks_dir):
    items = load_benchmark("ugphysics", limit=40)
    for item in items:
        boxed = r"\boxed{" + ", ".join(item.references) + "}"
        assert grade_physics(boxed, list(item.references)), item.id
