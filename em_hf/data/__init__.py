"""Data: the package's arithmetic benchmark."""

from em_hf.data.arithmetic import (
    ARITHMETIC_INSTRUCTION,
    ArithmeticProblem,
    arithmetic_dataset,
    extract_last_integer,
    grade_last_integer,
    make_arithmetic_problems,
)

__all__ = [
    "ARITHMETIC_INSTRUCTION",
    "ArithmeticProblem",
    "arithmetic_dataset",
    "extract_last_integer",
    "grade_last_integer",
    "make_arithmetic_problems",
]
