"""Evaluation: benchmarks, graders (math, physics, code sandbox), decoding methods, runs and reports."""

from em_hf.eval.benchmarks import BENCHMARKS, BenchmarkItem, find_benchmarks_dir, load_benchmark
from em_hf.eval.decoding import DecodingMethod, parse_method
from em_hf.eval.generation import Completion, generate_completions, render_prompts
from em_hf.eval.grading import grade_math, grade_physics
from em_hf.eval.sandbox import CodeResult, extract_code, run_code
from em_hf.eval.scoring import Grade, grade_item

__all__ = [
    "BENCHMARKS",
    "BenchmarkItem",
    "CodeResult",
    "Completion",
    "DecodingMethod",
    "Grade",
    "extract_code",
    "find_benchmarks_dir",
    "generate_completions",
    "grade_item",
    "grade_math",
    "grade_physics",
    "load_benchmark",
    "parse_method",
    "render_prompts",
    "run_code",
]
