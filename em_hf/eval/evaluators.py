"""``evaluate(model, tokenizer) -> metrics`` callables built on the harness, for
:class:`~em_hf.trainers.callbacks.BenchmarkEarlyStoppingCallback` (per-step evaluation and early
stopping: One-shot Entropy Minimization, section 3, finds accuracy peaking near step 10 while the loss
keeps falling) and for any loop that wants a benchmark score of the current weights.

The items are answered by :func:`~em_hf.eval.methods.run_items` (the harness's decoding methods and
graders), so a score seen during training is the number ``em-hf eval`` reports for the same items,
method and seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from em_hf.eval.benchmarks import BenchmarkItem, load_benchmark
from em_hf.eval.methods import run_items
from em_hf.generation.decoding import DecodingMethod, parse_method

__all__ = ["Evaluator", "arithmetic_evaluator", "benchmark_evaluator"]

Evaluator = Callable[[Any, Any], dict[str, float]]


def benchmark_evaluator(
    items: Sequence[BenchmarkItem] | str,
    method: str | DecodingMethod = "greedy",
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 256,
    batch_size: int = 16,
    code_timeout_s: float = 10.0,
) -> Evaluator:
    """Build ``evaluate(model, tokenizer) -> {"accuracy", "entropy"}`` on benchmark items.

    Parameters:
        items (`Sequence[BenchmarkItem]` or `str`):
            The items, or a benchmark spec for :func:`~em_hf.eval.benchmarks.load_benchmark`
            (``"arithmetic:n=60"``, ``"math500:level=1"``, ...).
        method (`str` or `DecodingMethod`, *optional*, defaults to `"greedy"`):
            The decoding method (``"greedy"``, ``"sample:t=0.5"``, ``"em-inf"``, ``"sc:4"``, ...).
        seeds (`Sequence[int]`, *optional*, defaults to `(0,)`):
            Seeds of a sampled method (a deterministic method runs once); the metrics average over them.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Generated tokens per answer.
        batch_size (`int`, *optional*, defaults to `16`):
            Prompts per ``generate`` call.
        code_timeout_s (`float`, *optional*, defaults to `10.0`):
            Seconds per program run for code items.

    Returns:
        ``evaluate(model, tokenizer)``: ``accuracy`` (fraction of item x seed answers graded correct) and
        ``entropy`` (mean over answers of the model's mean token entropy along the answer, nats).
    """
    decoding = method if isinstance(method, DecodingMethod) else parse_method(method)
    loaded = load_benchmark(items) if isinstance(items, str) else list(items)
    if not loaded:
        raise ValueError("`items` is empty: give at least one benchmark item.")
    run_seeds = list(seeds) if decoding.do_sample else list(seeds)[:1]
    if not run_seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")

    def evaluate(model, tokenizer) -> dict[str, float]:
        results = [
            result
            for seed in run_seeds
            for result in run_items(
                model,
                tokenizer,
                loaded,
                decoding,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                code_timeout_s=code_timeout_s,
            )
        ]
        return {
            "accuracy": statistics.fmean(float(r.correct) for r in results),
            "entropy": statistics.fmean(r.mean_entropy for r in results),
        }

    return evaluate


def arithmetic_evaluator(num_problems: int = 60, *, data_seed: int = 0, **options: Any) -> Evaluator:
    """:func:`benchmark_evaluator` on the package's arithmetic set (``arithmetic:n=<num_problems>``).

    Parameters:
        num_problems (`int`, *optional*, defaults to `60`):
            Problems of :func:`~em_hf.data.arithmetic.make_arithmetic_problems`.
        data_seed (`int`, *optional*, defaults to `0`):
            Seed of the generated problems.
        options:
            The other arguments of :func:`benchmark_evaluator` (``method``, ``seeds``, ...), with
            ``max_new_tokens`` defaulting to `32` and ``batch_size`` to `64` here (short answers).

    Examples:
        >>> from em_hf.eval import arithmetic_evaluator
        >>> evaluate = arithmetic_evaluator(num_problems=20, method="greedy")
        >>> # BenchmarkEarlyStoppingCallback(evaluate, eval_steps=5) in EntropyMinTrainer(callbacks=[...])
    """
    options = {"max_new_tokens": 32, "batch_size": 64, **options}
    return benchmark_evaluator(f"arithmetic:n={num_problems},seed={data_seed}", **options)
