"""Input checks, citations and the pass@k estimator shared by em_hf's ``evaluate`` metric scripts;
the evaluation harness's report (:mod:`em_hf.eval.report`) and pre-flight use the same estimator.

The metric scripts import this module by its absolute name (``evaluate`` copies a local script into
its modules cache and imports it from there, so relative imports would be copied as files too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from em_hf.utils.validation import check_int

__all__ = [
    "MATH_VERIFY_CITATION",
    "as_list",
    "check_k",
    "check_not_empty",
    "check_same_length",
    "pass_at_k",
    "reference_text",
]


MATH_VERIFY_CITATION = r"""@misc{kydlicek2025mathverify,
  title={Math-Verify: Math Verification Library},
  author={Kydl{\'\i}{\v{c}}ek, Hynek},
  howpublished={\url{https://github.com/huggingface/Math-Verify}},
  year={2025}
}
"""


def as_list(name: str, values: Any) -> list:
    """``values`` as a list (a list, tuple or array of items; a single string is refused).

    Parameters:
        name (`str`):
            The argument's name, used in the error message.
        values (`Sequence` or array):
            The batch of inputs.
    """
    if isinstance(values, str | bytes) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise TypeError(
            f"`{name}` must be a list with one entry per item, got {type(values).__name__}; "
            f"wrap a single item in a list: {name}=[...]."
        )
    return list(values)


def check_same_length(predictions: Sequence, references: Sequence) -> None:
    """Raise ``ValueError`` when ``predictions`` and ``references`` differ in length.

    Parameters:
        predictions (`Sequence`):
            One prediction per item.
        references (`Sequence`):
            One reference per item, in the same order.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have one entry per item, got {len(predictions)} "
            f"predictions and {len(references)} references."
        )


def check_not_empty(predictions: Sequence) -> None:
    """Raise ``ValueError`` when there is nothing to score (an accuracy of no items is undefined).

    Parameters:
        predictions (`Sequence`):
            The predictions given to the metric (after every ``add_batch``).
    """
    if len(predictions) == 0:
        raise ValueError("`predictions` is empty: give at least one item to score.")


def reference_text(reference: Any) -> Any:
    """A math reference as text: numbers as the graders read them (``142.0`` -> ``"142"``, ``0.5`` ->
    ``"0.5"``); strings and anything else unchanged (the metric's features reject what is not text).

    Parameters:
        reference (`str`, `int` or `float`):
            One reference answer.
    """
    if isinstance(reference, bool):
        return reference
    if isinstance(reference, int):
        return str(reference)
    if isinstance(reference, float):
        if not math.isfinite(reference):
            raise ValueError(f"`references` must hold finite numbers, got {reference!r}.")
        return str(int(reference)) if reference.is_integer() else repr(reference)
    return reference


def check_k(k: Any, sample_counts: Sequence[int]) -> list[int]:
    """The list of ``k`` values of pass@k, checked against the number of candidates of every problem.

    Parameters:
        k (`int` or `list[int]`):
            One ``k`` or several (duplicates are dropped, order kept); each an integer >= 1.
        sample_counts (`Sequence[int]`):
            The number of candidates of each problem; every ``k`` must be at most the smallest one.
    """
    values = [k] if isinstance(k, int) else k
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"`k` must be an integer >= 1 or a non-empty list of them, got {k!r}.")
    checked = list(dict.fromkeys(check_int("k", value, minimum=1) for value in values))
    fewest = min(sample_counts)
    if max(checked) > fewest:
        problem = list(sample_counts).index(fewest)
        raise ValueError(
            f"`k` = {max(checked)} is larger than the number of candidates of problem {problem} "
            f"({fewest}): pass@k needs n >= k samples per problem. Pass k values <= {fewest} or "
            "generate more candidates."
        )
    return checked


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem (Chen et al., "Evaluating Large Language Models
    Trained on Code", 2021): 1 - C(n - c, k) / C(n, k), the probability that at least one of k
    candidates drawn without replacement from the n generated ones is correct. The binomial
    coefficients are exact Python integers and (C(n, k) - C(n - c, k)) / C(n, k) is rounded once,
    so the estimate is the float closest to the exact value, for any n.

    Parameters:
        num_samples (`int`):
            n, the number of candidates generated for the problem.
        num_correct (`int`):
            c, how many of them pass the tests (0 <= c <= n).
        k (`int`):
            The budget of attempts, 1 <= k <= n.
    """
    n = check_int("num_samples", num_samples, minimum=1)
    c = check_int("num_correct", num_correct, minimum=0)
    check_int("k", k, minimum=1)
    if c > n:
        raise ValueError(f"`num_correct` ({c}) must be at most `num_samples` ({n}).")
    if k > n:
        raise ValueError(f"`k` ({k}) must be at most `num_samples` ({n}).")
    if n - c < k:
        return 1.0
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total
