"""Final-answer extraction shared by the graders, the self-consistency vote and reward, and prompt
selection: the last ``\\boxed{...}`` (the papers' math format), else the last number in the text;
and the equivalence of two final answers (:func:`answers_equivalent`: normalized strings, numbers
within a tolerance, else math-verify), shared by the math grader and the semantic-entropy reward."""

from __future__ import annotations

import math
import re
from functools import lru_cache

__all__ = [
    "answers_equivalent",
    "extract_all_boxed",
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "normalize_answer",
    "numeric_value",
]

_BOXED_PREFIXES = ("\\boxed", "\\fbox", "\\framebox")
# A font or text command wrapping a whole answer: ``\\textbf{033}`` (AIME solutions) -> ``033``.
_WRAPPER = re.compile(r"\\(?:textbf|text|mathrm|mathbf|textrm)\{(.*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\framebox{...}``) in ``text``,
    nested braces handled;
    ``\\boxed 5`` (no braces) gives ``"5"``. None when there is no complete box."""
    best: tuple[int, str] | None = None
    for prefix in _BOXED_PREFIXES:
        start = text.rfind(prefix)
        while start != -1:
            content = _box_content(text, start + len(prefix))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = text.rfind(prefix, 0, start)
    return None if best is None else best[1].strip()


def extract_all_boxed(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}``/``\\fbox{...}`` in ``text``, in order of position
    (nested braces handled; a box inside another box's argument is part of that argument)."""
    found: list[tuple[int, int, str]] = []  # (start, end bound, content)
    for prefix in _BOXED_PREFIXES:
        start = text.find(prefix)
        while start != -1:
            content = _box_content(text, start + len(prefix))
            if content is not None:
                found.append((start, start + len(prefix) + len(content) + 2, content.strip()))
            start = text.find(prefix, start + len(prefix))
    found.sort()
    boxes: list[str] = []
    end = -1
    for start, box_end, content in found:
        if start >= end:  # not nested in the previous box
            boxes.append(content)
            end = box_end
    return boxes


def _box_content(text: str, pos: int) -> str | None:
    """The argument of a box command whose name ends at ``pos``: ``{...}`` with balanced braces, or
    one space-separated token (``\\boxed 5``); None when the braces never close."""
    if pos < len(text) and text[pos] == " ":
        match = re.match(r" +([^\s$]+)", text[pos:])
        return match.group(1) if match else None
    if pos >= len(text) or text[pos] != "{":
        return None
    depth = 0
    for index in range(pos, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : index]
    return None


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (``-12``, ``3.5``, ``1,000`` -> ``1000``), normalized with
    :func:`normalize_answer`; None when there is none."""
    matches = _NUMBER.findall(text)
    return normalize_answer(matches[-1]) if matches else None


def normalize_answer(answer: str) -> str:
    """A canonical string for voting: surrounding ``$``/spaces/final period stripped, a font command
    wrapping the whole answer removed (``\\textbf{(073)}`` -> ``(073)``), parentheses around a lone
    number removed, thousands separators removed, and numbers written without leading or trailing zeros
    (``073`` -> ``73``, ``2.50`` -> ``2.5``, ``3.0`` -> ``3``)."""
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    wrapped = _WRAPPER.fullmatch(text)
    if wrapped and _balanced(wrapped.group(1)):
        text = wrapped.group(1).strip()
    lone = re.fullmatch(r"\((-?\d+(?:\.\d+)?)\)", text)
    if lone:
        text = lone.group(1)
    candidate = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    if re.fullmatch(r"-?\d+(\.\d+)?|-?\.\d+", candidate):
        if "." in candidate:
            candidate = candidate.rstrip("0").rstrip(".")
        sign, digits = ("-", candidate[1:]) if candidate.startswith("-") else ("", candidate)
        digits = digits.lstrip("0")
        if digits.startswith(".") or digits == "":
            digits = "0" + digits
        candidate = sign + digits
        if candidate in ("-0", ""):
            candidate = "0"
        return candidate
    return text


def _balanced(text: str) -> bool:
    """Whether the braces of ``text`` balance without going negative (so a ``\\text{...}`` match
    spans the whole answer rather than ``\\text{a}\\text{b}``)."""
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last ``\\boxed{}`` content, else the last number, both
    normalized (:func:`normalize_answer`); None when neither exists."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return normalize_answer(boxed)
    return extract_last_number(text)


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def _math_verify():
    try:
        import math_verify
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "Grading math answers needs the `math-verify` package: pip install 'em_hf[eval]' "
            "(or: pip install math-verify)."
        ) from error
    return math_verify


@lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    """math-verify's parse of one answer, given as the content of a box (cached: references repeat)."""
    return tuple(_math_verify().parse("\\boxed{" + answer + "}", parsing_timeout=5))


def numeric_value(answer: str) -> float | None:
    """The answer as a float when it is a plain number (``-3``, ``2.50``, ``1,000``) or an
    expression math-verify evaluates to a number without free symbols (``4.88 \\times 10^{23}``,
    ``\\frac{3}{4}``, ``2\\sqrt{2}``); None otherwise."""
    text = normalize_answer(answer)
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    parsed = _parse(answer)
    if not parsed:
        return None
    expression = parsed[0]
    try:
        if getattr(expression, "free_symbols", None) or not getattr(expression, "is_number", False):
            return None
        value = complex(expression)
    except (TypeError, ValueError, AttributeError):
        return None
    if value.imag != 0 or not math.isfinite(value.real):
        return None
    return value.real


def answers_equivalent(prediction: str, reference: str, rel_tol: float = 1e-6) -> bool:
    """Whether two final answers (box contents) are the same: equal normalized strings; else, when
    both are numbers (:func:`numeric_value`), equal within ``rel_tol`` (relative: math-verify rounds
    to 6 decimals, which makes ``2.88e-19`` equal ``1.3e-27``); else equivalent for math-verify
    (``verify(gold=reference, target=prediction)``: symbolic equality, sets, intervals, equations)."""
    if normalize_answer(prediction) == normalize_answer(reference):
        return True
    expected, got = numeric_value(reference), numeric_value(prediction)
    if expected is not None and got is not None:
        return _close(got, expected, rel_tol)
    gold, target = _parse(reference), _parse(prediction)
    if not gold or not target:
        return False
    return bool(_math_verify().verify(list(gold), list(target), timeout_seconds=5))


def _close(value: float, expected: float, rel_tol: float) -> bool:
    """|value - expected| <= rel_tol * |expected| (exact equality when the expected value is 0)."""
    return math.isclose(value, expected, rel_tol=rel_tol, abs_tol=0.0)
