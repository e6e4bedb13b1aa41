"""The package's own arithmetic benchmark: deterministic integer problems with known answers.

Two- and three-operand additions and subtractions of small integers ("Compute 17 + 8 - 3."),
generated from a seed so that every run and every machine sees the same items. Completions are
graded by the LAST integer they contain, a rule that needs no answer format from the model.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = [
    "ARITHMETIC_INSTRUCTION",
    "ArithmeticProblem",
    "arithmetic_dataset",
    "extract_last_integer",
    "grade_last_integer",
    "make_arithmetic_problems",
]

ARITHMETIC_INSTRUCTION = "Reply with just the number."

# An integer, with optional thousands separators ("1,234": groups of exactly three digits) and an
# optional ".0" tail; never a piece of a decimal number such as 3.5.
_INTEGER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?(?![\d.]*\d)")


@dataclass(frozen=True)
class ArithmeticProblem:
    """One arithmetic item.

    Parameters:
        id (`str`):
            ``"arith-<seed>-<index>"``, unique within a seed.
        question (`str`):
            The bare question, e.g. ``"Compute 13 + 14."``.
        answer (`int`):
            Its value.

    Examples:
        >>> from em_hf.data.arithmetic import make_arithmetic_problems
        >>> problem = make_arithmetic_problems(1, seed=0)[0]
        >>> problem.answer == eval(problem.question.removeprefix("Compute ").rstrip("."))
        True
        >>> problem.messages[0]["role"]
        'user'
    """

    id: str
    question: str
    answer: int

    @property
    def prompt(self) -> str:
        """The user message: the question followed by :data:`ARITHMETIC_INSTRUCTION`."""
        return f"{self.question} {ARITHMETIC_INSTRUCTION}"

    @property
    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (for tokenizers with a chat template)."""
        return [{"role": "user", "content": self.prompt}]


def make_arithmetic_problems(
    n: int,
    seed: int = 0,
    operand_counts: tuple[int, ...] = (2, 3),
    max_operand: int = 20,
    operators: str = "+-",
) -> list[ArithmeticProblem]:
    """``n`` problems, cycling through ``operand_counts``; operands are uniform in [1, max_operand].

    The same arguments always give the same problems (a private ``random.Random(seed)``).

    Parameters:
        n (`int`):
            Number of problems (>= 1).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the private generator; also part of each problem's ``id``.
        operand_counts (`tuple[int, ...]`, *optional*, defaults to `(2, 3)`):
            Operands per problem (each >= 2), used in turn: problem i has ``operand_counts[i % len]``.
        max_operand (`int`, *optional*, defaults to `20`):
            Operands are drawn uniformly from 1 to this value.
        operators (`str`, *optional*, defaults to `"+-"`):
            The operators to draw from, any of ``"+"``, ``"-"``, ``"*"`` (``*`` binds tighter).

    Returns:
        `list[ArithmeticProblem]`

    Examples:
        >>> from em_hf.data import make_arithmetic_problems
        >>> make_arithmetic_problems(2)
        [ArithmeticProblem(id='arith-0-0', question='Compute 13 + 14.', answer=27),
         ArithmeticProblem(id='arith-0-1', question='Compute 9 - 17 - 16.', answer=-24)]
        >>> make_arithmetic_problems(1)[0].prompt
        'Compute 13 + 14. Reply with just the number.'
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1, got {n!r}.")
    if not operand_counts or any(not isinstance(k, int) or k < 2 for k in operand_counts):
        raise ValueError(f"`operand_counts` must be integers >= 2, got {operand_counts!r}.")
    if not isinstance(max_operand, int) or max_operand < 1:
        raise ValueError(f"`max_operand` must be an integer >= 1, got {max_operand!r}.")
    if not operators or set(operators) - set("+-*"):
        raise ValueError(f"`operators` must be a non-empty string of '+', '-', '*', got {operators!r}.")
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        count = operand_counts[i % len(operand_counts)]
        operands = [rng.randint(1, max_operand) for _ in range(count)]
        ops = [rng.choice(operators) for _ in range(count - 1)]
        expression = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:], strict=True))
        # The expression uses only + - * on integers: evaluate it without eval().
        answer = _evaluate(operands, ops)
        problems.append(
            ArithmeticProblem(id=f"arith-{seed}-{i}", question=f"Compute {expression}.", answer=answer)
        )
    return problems


def _evaluate(operands: list[int], ops: list[str]) -> int:
    """Value of ``operands[0] ops[0] operands[1] ...`` with the usual precedence of * over + and -."""
    terms = [operands[0]]
    signs = [1]
    for op, x in zip(ops, operands[1:], strict=True):
        if op == "*":
            terms[-1] *= x
        else:
            terms.append(x)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms, strict=True))


def arithmetic_dataset(n: int, seed: int = 0, **kwargs):
    """The problems as a ``datasets.Dataset`` with columns ``id``, ``prompt`` (chat messages),
    ``question`` and ``answer`` (the layout the EM trainers read).

    Parameters:
        n, seed, **kwargs:
            As in :func:`make_arithmetic_problems`.

    Examples:
        >>> from em_hf.data import arithmetic_dataset
        >>> dataset = arithmetic_dataset(3)
        >>> dataset.column_names
        ['id', 'prompt', 'question', 'answer']
        >>> dataset[0]["prompt"], dataset[0]["answer"]
        ([{'role': 'user', 'content': 'Compute 13 + 14. Reply with just the number.'}], 27)
    """
    from datasets import Dataset

    problems = make_arithmetic_problems(n, seed=seed, **kwargs)
    return Dataset.from_dict(
        {
            "id": [p.id for p in problems],
            "prompt": [p.messages for p in problems],
            "question": [p.question for p in problems],
            "answer": [p.answer for p in problems],
        }
    )


def extract_last_integer(text: str) -> int | None:
    """The last integer in ``text`` ("1,234" and "12.0" count as integers), or None.

    Examples:
        >>> from em_hf.data import extract_last_integer
        >>> extract_last_integer("13 + 14 = 27, or 1,234.0"), extract_last_integer("3.5")
        (1234, None)
    """
    matches = _INTEGER.findall(text)
    if not matches:
        return None
    return int(float(matches[-1].replace(",", "")))


def grade_last_integer(completion: str, answer: int) -> bool:
    """True when the last integer of ``completion`` (:func:`extract_last_integer`) equals ``answer``."""
    return extract_last_integer(completion) == answer
