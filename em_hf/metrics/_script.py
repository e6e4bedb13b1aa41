"""The base of em_hf's ``evaluate`` metric scripts (imports ``evaluate``; the scripts import it by
this module's name, see :class:`CheckedMetric`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from em_hf.metrics._common import as_list, check_not_empty, check_same_length

__all__ = ["CheckedMetric", "accuracy_result", "metric_card", "per_item_accuracy_doc"]


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
