"""The arithmetic benchmark: deterministic problems, correct answers, last-integer grading."""

from __future__ import annotations

import re

import pytest

from em_hf.data.arithmetic import (
    ARITHMETIC_INSTRUCTION,
    ArithmeticProblem,
    arithmetic_dataset,
    extract_last_integer,
    grade_last_integer,
    make_arithmetic_problems,
)

_QUESTION = re.compile(r"Compute (\d+(?: [-+*] \d+)+)\.")


def _expression(problem: ArithmeticProblem) -> str:
    match = _QUESTION.fullmatch(problem.question)
    assert match, f"unexpected question format: {problem.question!r}"
    return match.group(1)


def test_same_seed_same_problems_and_different_seed_different_problems():
    first = make_arithmetic_problems(50, seed=7)
    assert first == make_arithmetic_problems(50, seed=7)
    other = make_arithmetic_problems(50, seed=8)
    assert [p.question for p in first] != [p.question for p in other]
    # A longer run starts with the same items (items do not depend on n).
    assert make_arithmetic_problems(80, seed=7)[:50] == first


def test_ids_are_unique_and_name_seed_and_index():
    problems = make_arithmetic_problems(30, seed=4)
    assert [p.id for p in problems] == [f"arith-4-{i}" for i in range(30)]


@pytest.mark.parametrize("operators", ["+-", "+-*", "*", "-"])
def test_answers_equal_an_independent_evaluation_of_the_question(operators):
    problems = make_arithmetic_problems(300, seed=1, operand_counts=(2, 3, 4), operators=operators)
    for problem in problems:
        expression = _expression(problem)
        assert set(re.findall(r"[-+*]", expression)) <= set(operators)
        assert problem.answer == eval(expression), problem.question  # plain integer arithmetic
        assert isinstance(problem.answer, int)


def test_default_problems_mix_additions_and_subtractions_with_negative_answers():
    problems = make_arithmetic_problems(200)
    ops = {op for p in problems for op in re.findall(r" ([-+*]) ", p.question)}
    assert ops == {"+", "-"}
    assert any(p.answer < 0 for p in problems)
    assert any(p.answer > 0 for p in problems)


def test_operand_counts_cycle():
    problems = make_arithmetic_problems(12, seed=2, operand_counts=(2, 3, 5))
    counts = [len(re.findall(r"\d+", _expression(p))) for p in problems]
    assert counts == [2, 3, 5] * 4
    default = make_arithmetic_problems(6)
    assert [len(re.findall(r"\d+", _expression(p))) for p in default] == [2, 3] * 3


def test_operands_lie_in_one_to_max_operand():
    problems = make_arithmetic_problems(300, seed=3, max_operand=4)
    operands = [int(x) for p in problems for x in re.findall(r"\d+", _expression(p))]
    assert set(operands) == {1, 2, 3, 4}  # both ends reached, nothing outside
    default = make_arithmetic_problems(300, seed=3)
    operands = [int(x) for p in default for x in re.findall(r"\d+", _expression(p))]
    assert min(operands) >= 1
    assert max(operands) <= 20


def test_prompt_and_messages():
    problem = make_arithmetic_problems(1, seed=0)[0]
    assert problem.prompt == f"{problem.question} {ARITHMETIC_INSTRUCTION}"
    assert problem.messages == [{"role": "user", "content": problem.prompt}]
    assert "number" in ARITHMETIC_INSTRUCTION


def test_problem_answer_is_graded_correct():
    for problem in make_arithmetic_problems(40, seed=5):
        assert grade_last_integer(f"{_expression(problem)} = {problem.answer}.", problem.answer)
        assert not grade_last_integer(f"The answer is {problem.answer + 1}", problem.answer)


def test_arithmetic_dataset_columns_and_chat_prompts():
    dataset = arithmetic_dataset(6, seed=9, operand_counts=(3,))
    problems = make_arithmetic_problems(6, seed=9, operand_counts=(3,))
    assert len(dataset) == 6
    assert set(dataset.column_names) == {"id", "prompt", "question", "answer"}
    assert dataset["id"] == [p.id for p in problems]
    assert dataset["question"] == [p.question for p in problems]
    assert dataset["answer"] == [p.answer for p in problems]
    assert dataset["prompt"] == [p.messages for p in problems]
    assert dataset[0]["prompt"] == [{"role": "user", "content": problems[0].prompt}]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"`n` must be an integer >= 1, got 0"),
        ({"n": -3}, r"`n` must be an integer >= 1"),
        ({"n": 2.5}, r"`n` must be an integer >= 1"),
        ({"n": True}, r"`n` must be an integer >= 1"),
        ({"n": 3, "operand_counts": (1,)}, r"`operand_counts` must be integers >= 2, got \(1,\)"),
        ({"n": 3, "operand_counts": ()}, r"`operand_counts`"),
        ({"n": 3, "operand_counts": (2, 2.5)}, r"`operand_counts`"),
        ({"n": 3, "max_operand": 0}, r"`max_operand` must be an integer >= 1"),
        ({"n": 3, "operators": "/"}, r"`operators` must be a non-empty string of '\+', '-', '\*', got '/'"),
        ({"n": 3, "operators": "+/"}, r"`operators`"),
        ({"n": 3, "operators": ""}, r"`operators`"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_arithmetic_problems(**kwargs)


def test_dataset_argument_errors_are_the_same():
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        arithmetic_dataset(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 + 8 = 15.", 15),
        ("the answer is -3", -3),
        ("x=-12.", -12),
        ("1,234", 1234),
        ("It is 1,234,567 in all", 1234567),
        ("12.0", 12),
        ("12.00 apples", 12),
        ("The answer is 42.", 42),
        ("10.", 10),
        ("42\n", 42),
        ("**15**", 15),
        ("\\boxed{15}", 15),
        ("3.5", None),  # a decimal is not an integer
        ("12.50", None),
        ("pi is about 3.14159", None),
        ("5 and 3.5", 5),  # the last INTEGER, skipping the decimal
        ("no number", None),
        ("", None),
        ("10 - 7 = 3\n\nThis is 2 steps", 2),
        ("5-3", 3),  # a minus between digits is an operator, not a sign
        ("1, 2, 3", 3),
        ("15, then", 15),
        ("100%", 100),
        ("-0", 0),
    ],
)
def test_extract_last_integer(text, expected):
    assert extract_last_integer(text) == expected


def test_comma_not_followed_by_three_digits_is_not_a_thousands_separator():
    """Only "1,234"-style groups of three digits join into one number: "2,3" holds 2 and 3, and its
    last integer is 3, never 23 (a number the text does not contain)."""
    assert extract_last_integer("2,3") == 3
    assert extract_last_integer("the pair 7,8") == 8


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("15", 15, True),
        ("17 + 8 - 3 = 22", 22, True),
        ("The answer is -3.", -3, True),
        ("15 or maybe 16", 15, False),  # graded by the LAST integer
        ("1,000", 1000, True),
        ("no idea", 0, False),
        ("3.5", 3, False),
    ],
)
def test_grade_last_integer(completion, answer, expected):
    assert grade_last_integer(completion, answer) is expected
