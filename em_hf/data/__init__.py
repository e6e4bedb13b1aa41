"""Data: the package's arithmetic benchmark and prompt selection by pass@k variance (one-shot EM)."""

from em_hf.data.arithmetic import (
    ARITHMETIC_INSTRUCTION,
    ArithmeticProblem,
    arithmetic_dataset,
    extract_last_integer,
    grade_last_integer,
    make_arithmetic_problems,
)
from em_hf.data.selection import PromptPassVariance, default_verifier, select_by_pass_variance

__all__ = [
    "ARITHMETIC_INSTRUCTION",
    "ArithmeticProblem",
    "PromptPassVariance",
    "arithmetic_dataset",
    "default_verifier",
    "extract_last_integer",
    "grade_last_integer",
    "make_arithmetic_problems",
    "select_by_pass_variance",
]
