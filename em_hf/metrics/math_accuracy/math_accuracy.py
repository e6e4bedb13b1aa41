r"""``math_accuracy``: the share of completions whose final answer equals the reference answer."""

from __future__ import annotations

from typing import Any

import datasets

from em_hf.eval.grading import grade_math
from em_hf.metrics import _common, _script

_DESCRIPTION = r"""
Accuracy of final answers to math problems, graded by em_hf's math grader
(`em_hf.eval.grading.grade_math`). The final answer of a completion is the content of its last
`\boxed{...}` (nested braces handled); without a box, the last number in the text (the lenient rule
of the Qwen2.5-Math evaluation scripts), or nothing with `strict=True`. It is correct when it equals
the reference after normalization, when both are numbers equal within a relative tolerance of 1e-6,
or when the math-verify library finds them equivalent (symbolic equality, fractions, intervals,
sets, LaTeX forms: `\frac12` = `0.5` = `\dfrac{1}{2}`). The score is the mean over items.
"""

_KWARGS_DESCRIPTION = (
    r"""
Parameters:
    predictions (`list[str]`):
        The model's completions, one per problem (the whole generated text; the answer is extracted).
    references (`list[str | int | float]`):
        The reference final answers, one per problem (`"\frac{1}{2}"`, `"142"`, or a number: `142.0`
        reads as `"142"`).
    strict (`bool`, *optional*, defaults to `False`):
        Require a `\boxed{}` answer (a completion without one is wrong) instead of falling back to
        the last number of the text.
"""
    + _script.per_item_accuracy_doc("math_accuracy")
    + r"""
Examples:

    >>> import em_hf.metrics
    >>> metric = em_hf.metrics.load("math_accuracy")
    >>> metric.compute(predictions=["The answer is \\boxed{\\frac{1}{2}}.", "x = 3"], references=["0.5", "4"])
    {'math_accuracy': 0.5, 'num_correct': 1, 'num_items': 2}
"""
)

_CITATION = r"""
@article{hendrycks2021math,
  title={Measuring Mathematical Problem Solving With the MATH Dataset},
  author={Hendrycks, Dan and Burns, Collin and Kadavath, Saurav and Arora, Akul and Basart, Steven
          and Tang, Eric and Song, Dawn and Steinhardt, Jacob},
  journal={NeurIPS},
  year={2021}
}
@article{yang2024qwen25math,
  title={Qwen2.5-Math Technical Report: Toward Mathematical Expert Model via Self-Improvement},
  author={Yang, An and Zhang, Beichen and Hui, Binyuan and others},
  journal={arXiv preprint arXiv:2409.12122},
  year={2024}
}
"""
_CITATION += _common.MATH_VERIFY_CITATION


@_script.metric_card(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
class MathAccuracy(_script.CheckedMetric):
    FEATURES = datasets.Features(
        {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
    )
    URLS = ("https://github.com/huggingface/Math-Verify",)

    def prepare_batch(self, predictions: list, references: list) -> tuple[list, list]:
        """Number references as the graders read them (``142.0`` -> ``"142"``)."""
        return predictions, [_common.reference_text(r) for r in references]

    def add(self, *, prediction=None, reference=None, **kwargs: Any) -> None:
        """Add one (completion, reference answer) pair; a number reference is stored as text.

        Parameters:
            prediction (`str`, *optional*):
                One completion.
            reference (`str`, `int` or `float`, *optional*):
                Its reference answer.
        """
        super().add(prediction=prediction, reference=_common.reference_text(reference), **kwargs)

    def _compute(self, predictions, references, strict: bool = False, return_per_item: bool = False):
        _common.check_not_empty(predictions)
        _common.check_same_length(predictions, references)
        if not isinstance(strict, bool):
            raise ValueError(f"`strict` must be True or False, got {strict!r}.")
        correct = [grade_math(p, r, strict=strict) for p, r in zip(predictions, references, strict=True)]
        return _script.accuracy_result("math_accuracy", correct, return_per_item)
