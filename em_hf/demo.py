"""`em-hf demo`: decoding methods compared on the package's arithmetic benchmark.

For each method the same problems are answered (sampled methods once per seed, greedy once), graded
by the last integer, and summarized as accuracy (mean and standard deviation over seeds), the mean
token entropy of the model along its own completions, and generated tokens per second.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from em_hf.data.arithmetic import grade_last_integer, make_arithmetic_problems
from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import DecodingMethod, parse_method

__all__ = ["DEFAULT_DEMO_METHODS", "MethodSummary", "format_table", "run_demo"]

DEFAULT_DEMO_METHODS = ("sample", "greedy", "adaptive", "em-inf")


@dataclass(frozen=True)
class MethodSummary:
    method: str
    accuracy: float  # mean over seeds of the fraction of items answered correctly
    accuracy_std: float  # standard deviation over seeds (0 for one seed)
    n_items: int
    n_seeds: int
    mean_entropy: float  # mean over completions of the per-token entropy (nats)
    mean_tokens: float  # generated tokens per completion
    tokens_per_s: float


def run_demo(
    model,
    tokenizer,
    methods: Sequence[str | DecodingMethod] = DEFAULT_DEMO_METHODS,
    n_items: int = 60,
    seeds: Sequence[int] = (0, 1, 2),
    max_new_tokens: int = 32,
    batch_size: int = 64,
    data_seed: int = 0,
    progress: bool = True,
) -> list[MethodSummary]:
    """Run every method on ``n_items`` arithmetic problems and return one summary per method."""
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    parsed = [m if isinstance(m, DecodingMethod) else parse_method(m) for m in methods]
    if not parsed:
        raise ValueError("`methods` is empty: give at least one decoding method.")
    problems = make_arithmetic_problems(n_items, seed=data_seed)
    prompts = [p.messages for p in problems]
    runs = [(method, list(seeds) if method.do_sample else list(seeds)[:1]) for method in parsed]
    bar = tqdm(total=sum(len(s) for _, s in runs), desc="demo", unit="run", disable=not progress)
    summaries = []
    for method, method_seeds in runs:
        accuracies, entropies, lengths, seconds = [], [], [], 0.0
        for seed in method_seeds:
            bar.set_postfix_str(f"{method.name} seed {seed}")
            completions, elapsed = generate_completions(
                model,
                tokenizer,
                prompts,
                method,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                seed=seed,
                progress=False,
            )
            bar.update()
            seconds += elapsed
            correct = [
                grade_last_integer(c.text, p.answer) for c, p in zip(completions, problems, strict=True)
            ]
            accuracies.append(sum(correct) / len(correct))
            entropies.extend(c.mean_entropy for c in completions)
            lengths.extend(c.num_tokens for c in completions)
        summaries.append(
            MethodSummary(
                method=method.name,
                accuracy=statistics.fmean(accuracies),
                accuracy_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                n_items=len(problems),
                n_seeds=len(method_seeds),
                mean_entropy=statistics.fmean(entropies),
                mean_tokens=statistics.fmean(lengths),
                tokens_per_s=sum(lengths) / seconds if seconds > 0 else 0.0,
            )
        )
    bar.close()
    return summaries


def format_table(summaries: Sequence[MethodSummary]) -> str:
    """A markdown table of the summaries (what the README shows)."""
    lines = [
        "| method | accuracy (mean ± sd over seeds) | items x seeds | mean token entropy (nats) "
        "| tokens / answer | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.method} | {100 * s.accuracy:.1f}% ± {100 * s.accuracy_std:.1f} "
            f"| {s.n_items} x {s.n_seeds} | {s.mean_entropy:.3f} "
            f"| {s.mean_tokens:.1f} | {s.tokens_per_s:.1f} |"
        )
    return "\n".join(lines)
