r"""Pre-flight: will entropy minimization help this model on this benchmark?

Both papers state the precondition: EM sharpens the model's own confidence, so it helps only where that
confidence tracks correctness (Unreasonable Effectiveness of EM, sec. 6; One-shot EM, sec. 4) and where
sampled answers leave headroom above the model's best single answer. :func:`run_preflight` measures both
on a labeled sample of a benchmark:

1. greedy accuracy (:func:`~em_hf.eval.methods.run_items`, the harness) and, from ``k`` samples per item
   at ``temperature`` (:func:`~em_hf.generation.batched.generate_completions`, graded by
   :func:`~em_hf.eval.scoring.grade_item`), sampled accuracy (the mean pass rate) and pass@k;
2. the AUROC of each confidence signal of :mod:`em_hf.eval.confidence` (minus mean entropy,
   self-certainty, sequence log-probability, vote share) against the correctness of the samples
   (:func:`~em_hf.eval.report.auroc`, Mann-Whitney with ties counting one half);
3. the pass@k variance, the mean over items of p_i (1 - p_i) with p_i the item's pass rate (One-shot EM's
   selection signal, sec. 2.2: items the model sometimes gets right);
4. a verdict per signal in plain words, from its AUROC's interval.

Intervals (95%): greedy accuracy by the Wilson score interval over items
(:func:`~em_hf.eval.report.wilson_interval`); everything computed from the samples by a percentile
bootstrap over ITEMS (``bootstrap`` resamples, seeded: an item's k samples stay together, since they are
not independent).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from em_hf.eval.benchmarks import BenchmarkItem, load_benchmark
from em_hf.eval.confidence import SIGNALS, score_completions, vote_shares
from em_hf.eval.methods import run_items
from em_hf.eval.report import auroc, wilson_interval
from em_hf.eval.scoring import final_answer, grade_item
from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.metrics import pass_at_k
from em_hf.utils.validation import check_int, check_number

__all__ = [
    "SIGNAL_NAMES",
    "Estimate",
    "PreflightReport",
    "bootstrap_interval",
    "format_preflight",
    "plot_reliability",
    "preflight_statistics",
    "run_preflight",
    "verdict",
]

SIGNAL_NAMES = {
    "neg_entropy": "minus mean token entropy (RENT)",
    "self_certainty": "self-certainty (INTUITOR)",
    "sequence_logprob": "sequence log-probability (EM-RL-sequence)",
    "vote_share": "vote share among the k samples (TTRL)",
}


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval.

    Parameters:
        value (`float` or `None`):
            The estimate on the whole sample (`None` when undefined, e.g. an AUROC with one class).
        low, high (`float` or `None`):
            The interval's bounds.
        method (`str`):
            ``"wilson"`` or ``"bootstrap"``.

    Examples:
        >>> from em_hf.eval.preflight import Estimate
        >>> Estimate(0.74, 0.66, 0.81, "bootstrap").value
        0.74
    """

    value: float | None
    low: float | None
    high: float | None
    method: str

    def __str__(self) -> str:
        if self.value is None:
            return "undefined"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class PreflightReport:
    """What :func:`run_preflight` measured (:func:`format_preflight` renders it, ``to_json`` saves it).

    Parameters:
        settings (`dict[str, Any]`):
            Model, benchmark, items, k, temperature, max_new_tokens, seed, bootstrap resamples.
        greedy_accuracy, sampled_accuracy, pass_at_k, pass_variance (`Estimate`):
            The accuracies, pass@k and the mean p(1-p) over items.
        auroc (`dict[str, Estimate]`):
            The AUROC of each signal against correctness.
        verdicts (`dict[str, str]`):
            One sentence per signal.
        deciles (`dict[str, list[tuple[float, float, int]]]`):
            Per signal, ten bins of the samples by the signal's quantiles: (mean signal, accuracy, count).
        samples (`list[dict[str, Any]]`):
            One record per sample: item id, correct, answer and the four signals.

    Examples:
        >>> from em_hf.eval.preflight import PreflightReport
        >>> sorted(PreflightReport.__dataclass_fields__)[:3]
        ['auroc', 'deciles', 'greedy_accuracy']
    """

    settings: dict[str, Any]
    greedy_accuracy: Estimate
    sampled_accuracy: Estimate
    pass_at_k: Estimate
    pass_variance: Estimate
    auroc: dict[str, Estimate]
    verdicts: dict[str, str]
    deciles: dict[str, list[tuple[float, float, int]]]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, path: str | Path) -> Path:
        """Write the report (samples included) as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def bootstrap_interval(
    groups: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float | None],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic`` over ``groups`` resampled with replacement (the
    resamples where it is undefined, `None`, are skipped; `(None, None)` when all are).

    Examples:
        >>> from em_hf.eval.preflight import bootstrap_interval
        >>> bootstrap_interval([1.0] * 5, lambda xs: sum(xs) / len(xs))
        (1.0, 1.0)
    """
    check_int("resamples", resamples)
    check_number("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    if not groups:
        raise ValueError("`groups` is empty: nothing to resample.")
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        value = statistic([groups[rng.randrange(len(groups))] for _ in groups])
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    values.sort()
    tail = (1 - level) / 2
    low = values[min(len(values) - 1, math.floor(tail * len(values)))]
    high = values[max(0, math.ceil((1 - tail) * len(values)) - 1)]
    return low, high


def verdict(name: str, estimate: Estimate) -> str:
    """One plain sentence from a signal's AUROC and its interval.

    Examples:
        >>> from em_hf.eval.preflight import Estimate, verdict
        >>> verdict("self_certainty", Estimate(0.74, 0.66, 0.81, "bootstrap"))
        'self-certainty (INTUITOR): confidence tracks correctness: AUROC 0.74 [0.66, 0.81]'
    """
    label = SIGNAL_NAMES.get(name, name)
    if estimate.value is None:
        return f"{label}: undefined (every sample is right, or every sample is wrong)"
    auc = f"AUROC {estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"
    if estimate.low > 0.5:
        strength = "tracks correctness" if estimate.low >= 0.6 else "tracks correctness, weakly"
        return f"{label}: confidence {strength}: {auc}"
    if estimate.high < 0.5:
        return f"{label}: confidence is higher on WRONG answers: {auc}; EM is expected to hurt here"
    return f"{label}: confidence does not track correctness: {auc}; EM is not expected to help here"


def _deciles(scores: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, float, int]]:
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    bins = []
    for b in range(10):
        members = order[b * len(order) // 10 : (b + 1) * len(order) // 10]
        if members:
            bins.append(
                (
                    statistics.fmean(scores[i] for i in members),
                    statistics.fmean(float(correct[i]) for i in members),
                    len(members),
                )
            )
    return bins


def preflight_statistics(
    greedy_correct: Sequence[bool],
    samples: Sequence[Sequence[dict[str, Any]]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> PreflightReport:
    """The report's statistics from graded data: ``greedy_correct[i]`` for item i and ``samples[i]``, its
    k sample records (``correct`` and the four signals of :data:`~em_hf.eval.confidence.SIGNALS`).

    Parameters:
        greedy_correct (`Sequence[bool]`):
            Greedy correctness per item.
        samples (`Sequence[Sequence[dict]]`):
            Per item, its k samples (the same k for every item).
        resamples (`int`, *optional*, defaults to `1000`):
            Bootstrap resamples.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the bootstrap.
        settings (`dict`, *optional*):
            Stored in the report.

    Returns:
        `PreflightReport`
    """
    if not samples or len(samples) != len(greedy_correct):
        raise ValueError(
            f"`samples` ({len(samples)} items) must be non-empty and match `greedy_correct` "
            f"({len(greedy_correct)} items)."
        )
    k = len(samples[0])
    if k < 1 or any(len(group) != k for group in samples):
        raise ValueError("every item needs the same number k >= 1 of samples.")
    for group in samples:
        for record in group:
            missing = [key for key in ("correct", *SIGNALS) if key not in record]
            if missing or any(not math.isfinite(record[key]) for key in SIGNALS):
                raise ValueError(f"a sample record lacks or has a non-finite {missing or list(SIGNALS)}.")
    boot = {"resamples": resamples, "seed": seed}
    n = len(samples)
    greedy = sum(map(bool, greedy_correct)) / n
    greedy_estimate = Estimate(greedy, *wilson_interval(greedy, n), "wilson")

    def rates(groups):
        return [sum(bool(r["correct"]) for r in group) / k for group in groups]

    def estimate(stat) -> Estimate:
        return Estimate(stat(samples), *bootstrap_interval(samples, stat, **boot), "bootstrap")

    sampled = estimate(lambda groups: statistics.fmean(rates(groups)))
    passk = estimate(
        lambda groups: statistics.fmean(pass_at_k(k, sum(bool(r["correct"]) for r in g), k) for g in groups)
    )
    variance = estimate(lambda groups: statistics.fmean(p * (1 - p) for p in rates(groups)))
    aurocs, verdicts, deciles = {}, {}, {}
    flat = [record for group in samples for record in group]
    for name in SIGNALS:

        def signal_auroc(groups, name=name):
            pooled = [record for group in groups for record in group]
            return auroc([r[name] for r in pooled], [bool(r["correct"]) for r in pooled])

        aurocs[name] = estimate(signal_auroc)
        verdicts[name] = verdict(name, aurocs[name])
        deciles[name] = _deciles([r[name] for r in flat], [bool(r["correct"]) for r in flat])
    return PreflightReport(
        settings=dict(settings or {}, items=n, k=k, bootstrap_resamples=resamples),
        greedy_accuracy=greedy_estimate,
        sampled_accuracy=sampled,
        pass_at_k=passk,
        pass_variance=variance,
        auroc=aurocs,
        verdicts=verdicts,
        deciles=deciles,
        samples=flat,
    )


def _sample(items: list[BenchmarkItem], num_items: int | None, seed: int) -> list[BenchmarkItem]:
    if num_items is None or num_items >= len(items):
        return items
    return random.Random(seed).sample(items, num_items)


def run_preflight(
    model,
    tokenizer,
    benchmark: str | Sequence[BenchmarkItem],
    *,
    num_items: int | None = 100,
    k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    resamples: int = 1000,
    progress: bool = False,
) -> PreflightReport:
    """Measure the pre-flight (module docstring) of ``model`` on a labeled sample of ``benchmark``.

    Parameters:
        model, tokenizer:
            The model and its tokenizer.
        benchmark (`str` or `Sequence[BenchmarkItem]`):
            A benchmark spec for :func:`~em_hf.eval.benchmarks.load_benchmark` (``"arithmetic:n=100"``,
            ``"math500:level=1"``, ...) or the items. Code items have no answer to vote on: not supported.
        num_items (`int` or `None`, *optional*, defaults to `100`):
            Items drawn at random (``seed``) when the benchmark has more; `None` takes all.
        k (`int`, *optional*, defaults to `8`):
            Samples per item (at least 2: vote share and pass-rate variance need several).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Generated tokens per answer (greedy and samples).
        batch_size (`int`, *optional*, defaults to `16`):
            Prompts per ``generate`` call and sequences per scoring pass.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the item sample, the sampling and the bootstrap.
        resamples (`int`, *optional*, defaults to `1000`):
            Bootstrap resamples.
        progress (`bool`, *optional*, defaults to `False`):
            Show generation progress bars.

    Returns:
        `PreflightReport`

    Examples:
        >>> from em_hf.eval.preflight import run_preflight
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> report = run_preflight(model, tokenizer, "arithmetic:n=4", k=2, max_new_tokens=2, resamples=50)
        >>> report.settings["items"], len(report.samples), sorted(report.auroc)
        (4, 8, ['neg_entropy', 'self_certainty', 'sequence_logprob', 'vote_share'])
    """
    check_int("k", k, minimum=2, hint=" (vote share and pass-rate variance need several samples)")
    check_number("temperature", temperature, low=0.0, low_open=True)
    if num_items is not None:
        check_int("num_items", num_items, hint=" (or None for all items)")
    label = benchmark if isinstance(benchmark, str) else "items"
    items = _sample(
        load_benchmark(benchmark) if isinstance(benchmark, str) else list(benchmark), num_items, seed
    )
    if not items:
        raise ValueError("`benchmark` has no items.")
    if any(item.task == "code" for item in items):
        raise ValueError("The pre-flight needs final answers to vote on; code benchmarks have none.")
    common = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed}
    greedy = run_items(model, tokenizer, items, parse_method("greedy"), **common)
    prompts = [item.prompt for item in items for _ in range(k)]
    completions, _ = generate_completions(
        model, tokenizer, prompts, parse_method(f"sample:t={temperature}"), progress=progress, **common
    )
    texts = [c.text for c in completions]
    scores = score_completions(model, tokenizer, prompts, texts, batch_size=batch_size)
    samples = []
    for index, item in enumerate(items):
        part = slice(index * k, (index + 1) * k)
        answers = [final_answer(item, text) for text in texts[part]]
        group = []
        for text, answer, share, score in zip(
            texts[part], answers, vote_shares(answers), scores[part], strict=True
        ):
            group.append(
                {
                    "item_id": item.id,
                    "correct": grade_item(item, text).correct,
                    "answer": answer,
                    "tokens": score.num_tokens,
                    "neg_entropy": score.neg_entropy,
                    "self_certainty": score.self_certainty,
                    "sequence_logprob": score.sequence_logprob,
                    "vote_share": share,
                }
            )
        samples.append(group)
    settings = {
        "benchmark": label,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    return preflight_statistics(
        [r.correct for r in greedy], samples, resamples=resamples, seed=seed, settings=settings
    )


def format_preflight(report: PreflightReport) -> str:
    """Markdown: the accuracies, pass@k and pass-rate variance, then one row per signal with its verdict."""
    s = report.settings
    lines = [
        f"Pre-flight on {s.get('benchmark')}: {s['items']} items, k = {s['k']} samples at T = "
        f"{s.get('temperature')}, <= {s.get('max_new_tokens')} new tokens. 95% intervals: greedy "
        "accuracy Wilson over items; the rest a percentile bootstrap over items "
        f"({s['bootstrap_resamples']} resamples).",
        "",
        "| measure | value [95% interval] |",
        "|---|---|",
        f"| greedy accuracy | {report.greedy_accuracy} |",
        f"| sampled accuracy (mean pass rate) | {report.sampled_accuracy} |",
        f"| pass@{s['k']} | {report.pass_at_k} |",
        f"| pass-rate variance, mean p(1-p) | {report.pass_variance} |",
        "",
        "| confidence signal | AUROC vs correctness [95% interval] | verdict |",
        "|---|---|---|",
    ]
    for name, estimate in report.auroc.items():
        lines.append(f"| {SIGNAL_NAMES[name]} | {estimate} | {report.verdicts[name].split(': ', 1)[1]} |")
    return "\n".join(lines)


def plot_reliability(report: PreflightReport, path: str | Path) -> Path:
    """Accuracy of the samples by confidence decile, one line per signal (a reliability-style plot); the
    sampled accuracy is the dashed line. Needs matplotlib (the ``eval`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, bins in report.deciles.items():
        axis.plot(
            range(1, len(bins) + 1),
            [accuracy for _, accuracy, _ in bins],
            marker="o",
            label=f"{SIGNAL_NAMES[name]} (AUROC {report.auroc[name]})",
        )
    axis.axhline(report.sampled_accuracy.value, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("confidence decile (1 = least confident)")
    axis.set_ylabel("accuracy of the samples")
    axis.set_title(f"Pre-flight: {report.settings.get('benchmark')}", fontsize=10)
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
