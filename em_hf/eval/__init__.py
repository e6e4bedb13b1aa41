"""Evaluation: benchmarks, graders (math, physics, code sandbox), runs of decoding methods, reports.

Names are loaded lazily: ``import em_hf.eval.grading`` does not import the code sandbox or the runner.
"""

from __future__ import annotations

from em_hf.utils.lazy import exports_by_name, lazy_module_attributes

_EXPORTS = exports_by_name(
    {
        "em_hf.eval.benchmarks": ("BENCHMARKS", "BenchmarkItem", "find_benchmarks_dir", "load_benchmark"),
        "em_hf.eval.grading": ("grade_math", "grade_physics"),
        # The isolation controls (check_sandbox, set_default_isolation, SandboxUnavailableError) are
        # imported from em_hf.eval.sandbox itself, where the README and the CLI use them.
        "em_hf.eval.sandbox": ("CodeResult", "extract_code", "run_code"),
        "em_hf.eval.scoring": ("Grade", "grade_item"),
        "em_hf.eval.methods": ("run_items",),
        "em_hf.eval.runner": ("evaluate",),
        "em_hf.eval.report": ("summarize",),
        "em_hf.eval.evaluators": ("arithmetic_evaluator", "benchmark_evaluator"),
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
