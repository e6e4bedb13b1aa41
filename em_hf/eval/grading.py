"""Graders for math and physics answers (the code grader is :mod:`em_hf.eval.sandbox`).

Math (:func:`grade_math`): the final answer is the last ``\\boxed{...}`` of the completion (nested
braces handled, :func:`~em_hf.utils.answers.extract_boxed`); without a box, the last number
(``strict=False``, the lenient rule of the Qwen2.5-Math evaluation scripts the papers use) or nothing
(``strict=True``). It matches the reference when (1) both normalize to the same string, (2) both are
plain numbers equal within ``rel_tol``, or (3) the ``math-verify`` library finds them equivalent
(symbolic equality, intervals, sets, LaTeX forms: ``\\frac12`` = ``0.5`` = ``\\dfrac{1}{2}``).

Physics (:func:`grade_physics`, UGPhysics): numeric answers (``4.88 \\times 10^{23}``, units stripped
by math-verify's normalization) compared with a relative tolerance (default 1%), otherwise
math-verify; items with several answers need every reference matched by a different boxed answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from em_hf.utils.answers import (
    answers_equivalent,
    extract_all_boxed,
    extract_boxed,
    extract_last_number,
    numeric_value,
)

__all__ = ["answers_equivalent", "grade_math", "grade_physics", "numeric_value", "split_top_level"]


def _final_answer(completion: str, strict: bool) -> str | None:
    if strict:
        return extract_boxed(completion)
    boxed = extract_boxed(completion)
    return boxed if boxed is not None else extract_last_number(completion)


def grade_math(completion: str, reference: str | float | int, strict: bool = False) -> bool:
    """True when the completion's final answer equals ``reference`` (module docstring).

    Parameters:
        completion (`str`):
            The model's text; its final answer is the last ``\\boxed{}`` content, else the last number.
        reference (`str`, `float` or `int`):
            The expected answer; a number may be given as such (AMC stores floats: ``142.0`` matches
            ``142``).
        strict (`bool`, *optional*, defaults to `False`):
            Require a ``\\boxed{}`` answer (no fallback to the last number).

    Returns:
        `bool`

    Examples:
        >>> from em_hf.eval.grading import grade_math
        >>> grade_math(r"so the answer is \\boxed{\\frac{1}{2}}", "0.5")
        True
        >>> grade_math("the answer is 142", 142.0), grade_math("the answer is 142", 142, strict=True)
        (True, False)
    """
    if not isinstance(completion, str):
        raise TypeError(f"`completion` must be a string, got {type(completion).__name__}.")
    reference_text = _reference_text(reference)
    answer = _final_answer(completion, strict)
    return answer is not None and answers_equivalent(answer, reference_text)


def _reference_text(reference: str | float | int) -> str:
    if isinstance(reference, bool) or not isinstance(reference, str | int | float):
        raise TypeError(f"`reference` must be a string or a number, got {type(reference).__name__}.")
    if isinstance(reference, float):
        if not math.isfinite(reference):
            raise ValueError(f"`reference` must be finite, got {reference!r}.")
        return repr(int(reference)) if reference.is_integer() else repr(reference)
    text = str(reference)
    if not text.strip():
        raise ValueError("`reference` is empty: give the expected final answer.")
    return text


def split_top_level(answer: str) -> list[str]:
    """Split ``answer`` at commas that are not inside braces, brackets or parentheses
    (``"50\\%, f(1,2)"`` -> ``["50\\%", "f(1,2)"]``)."""
    parts, depth, current = [], 0, []
    for char in answer:
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth = max(depth - 1, 0)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _physics_match(prediction: str, reference: str, rel_tol: float) -> bool:
    # Choices (UGPhysics MC: "b") and true/false ("Yes") compare case-insensitively as words.
    if re.fullmatch(r"[A-Za-z]+", reference.strip()):
        return prediction.strip().strip("().").lower() == reference.strip().lower()
    return answers_equivalent(prediction, reference, rel_tol=rel_tol)


def grade_physics(completion: str, references: str | Sequence[str], rel_tol: float = 0.01) -> bool:
    """True when the completion's boxed answers match the references (UGPhysics rule, module docstring).

    ``references`` is one answer or a list of answers (UGPhysics items with ``is_multiple_answer``:
    the parts of the reference box split at top-level commas). With one reference, the last box
    (else the last number) is the answer. With k references, the completion's boxes (each split at
    top-level commas) must match every reference, each by a different part, in any order.

    Parameters:
        completion (`str`):
            The model's text.
        references (`str` or `Sequence[str]`):
            One reference answer, or the list of a multiple-answer item's answers.
        rel_tol (`float`, *optional*, defaults to `0.01`):
            Relative tolerance of numeric answers, in [0, 1).

    Returns:
        `bool`

    Examples:
        >>> from em_hf.eval.grading import grade_physics
        >>> grade_physics(r"g = \\boxed{9.8}", "9.81"), grade_physics(r"\\boxed{2, 3}", ["3", "2"])
        (True, True)
    """
    if not isinstance(completion, str):
        raise TypeError(f"`completion` must be a string, got {type(completion).__name__}.")
    if not (isinstance(rel_tol, float | int) and 0 <= rel_tol < 1):
        raise ValueError(f"`rel_tol` must be in [0, 1), got {rel_tol!r}.")
    refs = [references] if isinstance(references, str) else [str(r) for r in references]
    if not refs or any(not r.strip() for r in refs):
        raise ValueError(f"`references` must hold at least one non-empty answer, got {references!r}.")
    if len(refs) == 1:
        answer = _final_answer(completion, strict=False)
        return answer is not None and _physics_match(answer, refs[0], rel_tol)
    candidates = [part for box in extract_all_boxed(completion) for part in split_top_level(box)]
    used: set[int] = set()
    for ref in refs:
        match = next(
            (i for i, c in enumerate(candidates) if i not in used and _physics_match(c, ref, rel_tol)), None
        )
        if match is None:
            return False
        used.add(match)
    return True
