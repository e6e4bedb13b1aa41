"""Grade a completion for a :class:`~em_hf.eval.benchmarks.BenchmarkItem`, by its task."""

from __future__ import annotations

from dataclasses import dataclass

from em_hf.data.arithmetic import extract_last_integer
from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.grading import grade_math, grade_physics
from em_hf.eval.sandbox import extract_code, run_code
from em_hf.utils.answers import extract_answer

__all__ = ["Grade", "final_answer", "grade_item"]


@dataclass(frozen=True)
class Grade:
    """What :func:`grade_item` found.

    Parameters:
        correct (`bool`):
            Whether the completion is right.
        answer (`str` or `None`):
            The extracted final answer (`None` for code, or when there is none).
        status (`str`):
            ``"correct"``/``"wrong"`` for answers, the :class:`~em_hf.eval.sandbox.CodeResult` status for
            code.

    Examples:
        >>> from em_hf.eval import grade_item, load_benchmark
        >>> item = load_benchmark("arithmetic:n=1")[0]
        >>> grade_item(item, f"The answer is {item.reference}.").correct
        True
    """

    correct: bool
    answer: str | None
    status: str


def final_answer(item: BenchmarkItem, completion: str) -> str | None:
    """The answer a vote counts: the last integer (arithmetic), else the last ``\\boxed{}`` content or
    last number, normalized (:func:`~em_hf.utils.answers.extract_answer`). Code has no answer to vote on."""
    if item.task == "code":
        raise ValueError(
            f"Item {item.id} of {item.benchmark!r} is a code task: it has no extractable final answer, "
            "so self-consistency (majority vote) does not apply; use a single-trajectory method."
        )
    if item.task == "arithmetic":
        value = extract_last_integer(completion)
        return None if value is None else str(value)
    return extract_answer(completion)


def grade_item(item: BenchmarkItem, completion: str, code_timeout_s: float = 10.0) -> Grade:
    """Grade ``completion`` with the item's grader (see :class:`~em_hf.eval.benchmarks.BenchmarkItem`).

    Parameters:
        item (`BenchmarkItem`):
            The item; its ``task`` picks the grader.
        completion (`str`):
            The model's text.
        code_timeout_s (`float`, *optional*, defaults to `10.0`):
            ``timeout_s`` of :func:`~em_hf.eval.sandbox.run_code` for code items.

    Examples:
        >>> from em_hf.eval.benchmarks import load_benchmark
        >>> from em_hf.eval.scoring import grade_item
        >>> item = load_benchmark("arithmetic:n=1")[0]  # Compute 13 + 14.
        >>> grade_item(item, "13 + 14 = 27")
        Grade(correct=True, answer='27', status='correct')
    """
    if item.task == "code":
        if item.tests is None:
            raise ValueError(f"Code item {item.id} of {item.benchmark!r} has no tests.")
        result = run_code(extract_code(completion), item.tests, timeout_s=code_timeout_s)
        return Grade(result.passed, None, result.status)
    answer = final_answer(item, completion)
    if item.task == "arithmetic":
        correct = answer is not None and answer == item.reference
    elif item.task == "physics":
        correct = grade_physics(completion, list(item.references) or [item.reference])
    elif item.task == "math":
        if item.reference is None:
            raise ValueError(f"Math item {item.id} of {item.benchmark!r} has no reference answer.")
        correct = grade_math(completion, item.reference)
    else:
        raise ValueError(f"Item {item.id} has unknown task {item.task!r}.")
    return Grade(correct, answer, "correct" if correct else "wrong")
