"""Evaluation: benchmarks, graders (math, physics, code sandbox), runs of decoding methods, reports.

Names are loaded lazily: ``import em_hf.eval.grading`` does not import the code sandbox or the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from em_hf.utils.lazy import lazy_module_attributes

_EXPORTS = {
    "BENCHMARKS": "em_hf.eval.benchmarks",
    "BenchmarkItem": "em_hf.eval.benchmarks",
    "find_benchmarks_dir": "em_hf.eval.benchmarks",
    "load_benchmark": "em_hf.eval.benchmarks",
    "grade_math": "em_hf.eval.grading",
    "grade_physics": "em_hf.eval.grading",
    "CodeResult": "em_hf.eval.sandbox",
    "extract_code": "em_hf.eval.sandbox",
    "run_code": "em_hf.eval.sandbox",
    "Grade": "em_hf.eval.scoring",
    "grade_item": "em_hf.eval.scoring",
    "run_items": "em_hf.eval.methods",
    "evaluate": "em_hf.eval.runner",
    "summarize": "em_hf.eval.report",
    "arithmetic_evaluator": "em_hf.eval.evaluators",
    "benchmark_evaluator": "em_hf.eval.evaluators",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from em_hf.eval.benchmarks import BENCHMARKS, BenchmarkItem, find_benchmarks_dir, load_benchmark  # noqa: F401
    from em_hf.eval.evaluators import arithmetic_evaluator, benchmark_evaluator  # noqa: F401
    from em_hf.eval.grading import grade_math, grade_physics  # noqa: F401
    from em_hf.eval.methods import run_items  # noqa: F401
    from em_hf.eval.report import summarize  # noqa: F401
    from em_hf.eval.runner import evaluate  # noqa: F401
    from em_hf.eval.sandbox import CodeResult, extract_code, run_code  # noqa: F401
    from em_hf.eval.scoring import Grade, grade_item  # noqa: F401

__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
