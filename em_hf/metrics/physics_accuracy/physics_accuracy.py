r"""``physics_accuracy``: the share of completions whose answers match the reference (UGPhysics rule)."""

from __future__ import annotations

import datasets

from em_hf.eval.grading import grade_physics
from em_hf.metrics import _common, _script

_DESCRIPTION = r"""
Accuracy of answers to physics problems, graded by em_hf's physics grader
(`em_hf.eval.grading.grade_physics`, the rule of the UGPhysics benchmark). With one reference answer,
the completion's answer is its last `\boxed{...}` (else its last number); numbers (`4.88 \times
10^{23}`, units stripped) match within a relative tolerance (default 1%), letters (multiple choice,
true/false) match case-insensitively, anything else is compared by math-verify. With several
reference answers (UGPhysics items with several answers), the completion's boxes, split at top-level
commas, must match every reference, each by a different part, in any order. The score is the mean
over items.
"""

_KWARGS_DESCRIPTION = (
    r"""
Parameters:
    predictions (`list[str]`):
        The model's completions, one per problem.
    references (`list[str]` or `list[list[str]]`):
        The reference answer of each problem, or the list of its answers (every one must be matched).
        All items of one call use the same form.
    rel_tol (`float`, *optional*, defaults to `0.01`):
        Relative tolerance of numeric answers, in [0, 1).
"""
    + _script.per_item_accuracy_doc("physics_accuracy")
    + r"""
Examples:

    >>> import em_hf.metrics
    >>> metric = em_hf.metrics.load("physics_accuracy")
    >>> completions = ["\\boxed{9.79\\,\\mathrm{m/s^2}}", "\\boxed{2.0}"]
    >>> metric.compute(predictions=completions, references=["9.81", "3"])
    {'physics_accuracy': 0.5, 'num_correct': 1, 'num_items': 2}
"""
)

_CITATION = r"""
@article{xu2025ugphysics,
  title={UGPhysics: A Comprehensive Benchmark for Undergraduate Physics Reasoning with Large Language Models},
  author={Xu, Xin and Xu, Qiyun and Xiao, Tong and Chen, Tianhao and Yan, Yuchen and Zhang, Jiaxin
          and Diao, Shizhe and Yang, Can and Wang, Yang},
  journal={arXiv preprint arXiv:2502.00334},
  year={2025}
}
"""
_CITATION += _common.MATH_VERIFY_CITATION

_STRING = datasets.Value("string")


@_script.metric_card(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
class PhysicsAccuracy(_script.CheckedMetric):
    FEATURES = (
        datasets.Features({"predictions": _STRING, "references": _STRING}),
        datasets.Features({"predictions": _STRING, "references": datasets.Sequence(_STRING)}),
    )
    URLS = ("https://github.com/YangLabHKUST/UGPhysics",)

    def _compute(self, predictions, references, rel_tol: float = 0.01, return_per_item: bool = False):
        _common.check_not_empty(predictions)
        _common.check_same_length(predictions, references)
        correct = [grade_physics(p, r, rel_tol=rel_tol) for p, r in zip(predictions, references, strict=True)]
        return _script.accuracy_result("physics_accuracy", correct, return_per_item)
