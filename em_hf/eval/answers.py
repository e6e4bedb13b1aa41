"""Final-answer extraction shared by the graders, the self-consistency vote and reward, and prompt
selection: the last ``\\boxed{...}`` (the papers' math format), else the last number in the text."""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_boxed", "extract_last_number", "normalize_answer"]

_BOXED_PREFIXES = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces handled;
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
    """A canonical string for voting: surrounding ``$``/spaces/final period stripped, thousands
    separators removed, and numbers written without trailing zeros (``2.50`` -> ``2.5``, ``3.0`` -> ``3``)."""
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    candidate = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    if re.fullmatch(r"-?\d+(\.\d+)?|-?\.\d+", candidate):
        if "." in candidate:
            candidate = candidate.rstrip("0").rstrip(".")
        if candidate in ("-0", ""):
            candidate = "0"
        return candidate
    return text


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last ``\\boxed{}`` content, else the last number, both
    normalized (:func:`normalize_answer`); None when neither exists."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return normalize_answer(boxed)
    return extract_last_number(text)
