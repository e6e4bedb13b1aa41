"""Evaluation: decoding methods and batched generation with entropy accounting."""

from em_hf.eval.decoding import DecodingMethod, parse_method
from em_hf.eval.generation import Completion, generate_completions, render_prompts

__all__ = ["Completion", "DecodingMethod", "generate_completions", "parse_method", "render_prompts"]
