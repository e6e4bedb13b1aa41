"""Input checks and the pass@k estimator shared by em_hf's ``evaluate`` metric scripts.

The metric scripts import this module by its absolute name (``evaluate`` copies a local script into
its modules cache and imports it from there, so relative imports would be copied as files too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import evaluate

from em_hf.utils.validation import check_int

__all__ = [
    "MATH_VERIFY_CITATION",
    "CheckedMetric",
    "accuracy_result",
    "as_list",
    "check_k",
    "check_not_empty",
    "check_same_length",
    "metric_card",
    "pass_at_k",
    "per_item_accuracy_doc",
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


def accuracy_result(key: str, correct: Sequence[bool], return_per_item: bool) -> dict[str, Any]:
    """``{key: mean, "num_correct", "num_items"}`` (and ``"correct"``, the per-item booleans, on request)."""
    result: dict[str, Any] = {
        key: sum(correct) / len(correct),
        "num_correct": sum(correct),
        "num_items": len(correct),
    }
    if return_per_item:
        result["correct"] = list(correct)
    return result


def per_item_accuracy_doc(key: str) -> str:
    """The ``return_per_item`` entry and the ``Returns:`` section shared by the accuracy metrics."""
    return (
        "    return_per_item (`bool`, *optional*, defaults to `False`):\n"
        '        Also return `"correct"`, the list of per-item booleans.\n\n'
        "Returns:\n"
        f'    `dict`: `"{key}"` (`float` in [0, 1]), `"num_correct"` (`int`), `"num_items"` (`int`),\n'
        '    and with `return_per_item=True` `"correct"` (`list[bool]`).\n'
    )


def metric_card(description: str, inputs: str, citation: str):
    """Class decorator of a metric script: the class docstring (description + inputs, as
    ``evaluate``'s ``add_start_docstrings`` writes it) and the texts of its ``MetricInfo``."""

    def decorate(cls):
        cls.__doc__ = description + inputs
        cls.DESCRIPTION, cls.INPUTS, cls.CITATION = description, inputs, citation
        return cls

    return decorate


class CheckedMetric(evaluate.Metric):
    """An ``evaluate.Metric`` that checks its inputs before ``evaluate`` stores them (empty input,
    one prediction per reference, a list rather than a bare string) and builds its ``MetricInfo``
    from class attributes. A metric script subclasses it through this module's name
    (``_common.CheckedMetric``): ``evaluate`` takes the first Metric class it finds in the script's
    namespace, so the base class itself must not be imported into it.

    Subclasses are decorated with :func:`metric_card` (``DESCRIPTION``, ``INPUTS``, ``CITATION``),
    set ``FEATURES`` (one ``datasets.Features`` or a tuple of alternatives) and ``URLS``, may override
    :meth:`prepare_batch` (normalize or check one batch) and implement ``_compute``.
    """

    DESCRIPTION: str = ""
    CITATION: str = ""
    INPUTS: str = ""
    FEATURES: Any = None
    URLS: tuple[str, ...] = ()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.INPUTS,
            features=list(self.FEATURES) if isinstance(self.FEATURES, tuple) else self.FEATURES,
            reference_urls=list(self.URLS),
        )

    def prepare_batch(self, predictions: list, references: list) -> tuple[list, list]:
        """Normalize or check one batch; the default keeps it as it is."""
        return predictions, references

    def add_batch(self, *, predictions=None, references=None, **kwargs: Any) -> None:
        """Check one batch (see the class docstring) before ``evaluate`` stores it."""
        if predictions is not None and references is not None:
            predictions = as_list("predictions", predictions)
            references = as_list("references", references)
            check_same_length(predictions, references)
            predictions, references = self.prepare_batch(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs: Any) -> dict | None:
        """Score the given items (and any added before); the options are the metric's ``_compute``
        keyword arguments (see the metric's description)."""
        if predictions is not None:
            check_not_empty(as_list("predictions", predictions))
        return super().compute(predictions=predictions, references=references, **kwargs)
