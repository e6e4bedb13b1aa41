"""`em-hf demo`: decoding methods compared on the package's arithmetic benchmark.

For each method the same problems (the harness's ``arithmetic`` benchmark) are answered by the
harness (:func:`~em_hf.eval.methods.run_items`: sampled methods once per seed, greedy once), graded
by the last integer, and summarized by :func:`~em_hf.eval.report.summarize`: accuracy (mean and
standard deviation over seeds), the mean token entropy of the model along its own completions, and
generated tokens per second (:func:`~em_hf.eval.report.format_seed_table` renders the table).
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from em_hf.eval.benchmarks import load_benchmark
from em_hf.eval.methods import run_items
from em_hf.eval.report import MethodSummary, summarize
from em_hf.generation.decoding import DecodingMethod, parse_method

__all__ = ["DEFAULT_DEMO_METHODS", "run_demo"]

DEFAULT_DEMO_METHODS = ("sample", "greedy", "adaptive", "em-inf")


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
    """Run every method on ``n_items`` arithmetic problems and return one summary per method
    (benchmark ``"arithmetic"``), in the order of ``methods``."""
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    parsed = [m if isinstance(m, DecodingMethod) else parse_method(m) for m in methods]
    if not parsed:
        raise ValueError("`methods` is empty: give at least one decoding method.")
    items = load_benchmark(f"arithmetic:n={n_items},seed={data_seed}")
    runs = [(method, list(seeds) if method.do_sample else list(seeds)[:1]) for method in parsed]
    bar = tqdm(total=sum(len(s) for _, s in runs), desc="demo", unit="run", disable=not progress)
    records = []
    for method, method_seeds in runs:
        for seed in method_seeds:
            bar.set_postfix_str(f"{method.name} seed {seed}")
            results = run_items(
                model,
                tokenizer,
                items,
                method,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            records.extend(result.to_dict() for result in results)
            bar.update()
    bar.close()
    return summarize(records)
