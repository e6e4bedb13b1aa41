"""Per-method summaries of a run: accuracy with a 95% interval, cost (tokens, time, FLOPs), and
whether confidence tracks correctness; rendered as markdown tables (Unreasonable Effectiveness of EM,
Table 3 layout) and an accuracy-vs-FLOPs plot (its Figure 1).

- Accuracy: the mean over every (item, seed) record. Interval: the Wilson score interval
  (z = 1.96) with n = the number of ITEMS. With several seeds the per-item accuracies are averages in
  [0, 1] whose variance is at most p(1-p), so this n is conservative (seeds never count as new items).
- AUROC: how well the confidence score s = -mean token entropy ranks correct above wrong answers,
  in the Mann-Whitney form AUROC = (R_correct - n_c (n_c + 1) / 2) / (n_c n_w), R_correct the sum of
  the correct answers' ranks of s (ties get their average rank, i.e. count one half); undefined
  (None) when every answer is correct or every answer is wrong. 0.5 = no signal.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from em_hf.metrics import pass_at_k

__all__ = [
    "MethodSummary",
    "auroc",
    "format_details",
    "format_seed_table",
    "format_table",
    "log_axis_ticks",
    "plot_accuracy_vs_flops",
    "summarize",
    "tick_labels",
    "wilson_interval",
]

Z_95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials:
    (c - h, c + h) with c = (p + z^2/2n) / (1 + z^2/n), h = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must be a proportion in [0, 1], got {p!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1, got {n!r}.")
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The bounds contain p exactly (rounding could put 0 just above the lower bound at p = 0).
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for the positive ``labels``, Mann-Whitney form with
    average ranks for ties (module docstring); None when one class is empty."""
    if len(scores) != len(labels):
        raise ValueError(f"`scores` and `labels` differ in length: {len(scores)} vs {len(labels)}.")
    if any(not math.isfinite(s) for s in scores):
        raise ValueError("`scores` must be finite numbers.")
    positives = sum(bool(label) for label in labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        average = (start + end) / 2 + 1  # ranks are 1-based
        for position in range(start, end + 1):
            ranks[order[position]] = average
        start = end + 1
    rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@dataclass(frozen=True)
class MethodSummary:
    """One (benchmark, method) row: accuracy over items x seeds with its Wilson interval, and per-item
    means of generated tokens, seconds, FLOPs and token entropy; AUROC of -entropy for correctness.

    Parameters:
        benchmark, method (`str`):
            The row's benchmark label and method spec.
        n_items, n_seeds (`int`):
            Distinct items and seeds in the row's records.
        accuracy (`float`):
            Mean correctness over every (item, seed) record.
        ci_low, ci_high (`float`):
            The 95% Wilson score interval of ``accuracy`` (:func:`wilson_interval`).
        tokens, seconds, flops, mean_entropy (`float`):
            Per-item means of the records' fields (:class:`~em_hf.eval.methods.ItemResult`).
        auroc (`float` or `None`):
            AUROC of -mean_entropy for correctness (:func:`auroc`); `None` when all or none are correct.
        accuracy_std (`float`, *optional*, defaults to `0.0`):
            Standard deviation over seeds of the per-seed accuracy (0 for one seed).
        tokens_per_s (`float`, *optional*, defaults to `0.0`):
            Generated tokens / generation seconds, over all records.
        pass_at_seeds (`float` or `None`, *optional*, defaults to `None`):
            Mean over items of pass@n (:func:`em_hf.metrics.pass_at_k`), n = the item's number of seeds;
            None for one seed.

    Examples:
        >>> from em_hf.eval.report import summarize
        >>> records = [
        ...     {"benchmark": "amc", "method": "sample", "seed": s, "item_id": i, "correct": ok, "tokens": 10,
        ...      "seconds": 0.5, "flops": 1e9, "mean_entropy": h}
        ...     for s, i, ok, h in [(0, "a", True, 0.2), (1, "a", False, 0.9), (0, "b", False, 0.8),
        ...                         (1, "b", False, 0.7)]
        ... ]
        >>> (summary,) = summarize(records)
        >>> summary.accuracy, summary.pass_at_seeds, summary.auroc, summary.tokens_per_s
        (0.25, 0.5, 1.0, 20.0)
    """

    benchmark: str
    method: str
    n_items: int
    n_seeds: int
    accuracy: float
    ci_low: float
    ci_high: float
    tokens: float
    seconds: float
    flops: float
    mean_entropy: float
    auroc: float | None
    accuracy_std: float = 0.0  # standard deviation over seeds of the per-seed accuracy (0 for one seed)
    tokens_per_s: float = 0.0  # generated tokens / generation seconds, over all records
    pass_at_seeds: float | None = None  # pass@n over the n seeds of each item (n > 1), else None


def _per_seed_accuracy_std(rows: Sequence[dict]) -> float:
    by_seed: dict[int, list[bool]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(bool(r["correct"]))
    accuracies = [statistics.fmean(values) for values in by_seed.values()]
    return statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0


def _pass_at_seeds(rows: Sequence[dict]) -> float | None:
    """Mean over items of pass@n (:func:`em_hf.metrics.pass_at_k`), n = the item's number of seeds;
    None for one seed."""
    per_item: dict[str, list[bool]] = {}
    for r in rows:
        per_item.setdefault(r["item_id"], []).append(bool(r["correct"]))
    if max(len(v) for v in per_item.values()) < 2:
        return None
    return statistics.fmean(pass_at_k(len(v), sum(v), len(v)) for v in per_item.values())


def summarize(records: Iterable[dict]) -> list[MethodSummary]:
    """One :class:`MethodSummary` per (benchmark, method), in order of first appearance.

    Parameters:
        records (`Iterable[dict]`):
            :class:`~em_hf.eval.methods.ItemResult` dicts (``to_dict()``, or the lines of ``items.jsonl``).

    Returns:
        `list[MethodSummary]`

    Examples:
        >>> from em_hf.eval.report import summarize
        >>> def record(item, correct, entropy):
        ...     return {"benchmark": "arithmetic", "method": "greedy", "seed": 0, "item_id": item,
        ...             "correct": correct, "tokens": 4, "seconds": 0.5, "flops": 1e9,
        ...             "mean_entropy": entropy}
        >>> [row] = summarize([record("a", True, 0.2), record("b", False, 0.9), record("c", True, 0.4)])
        >>> row.n_items, round(row.accuracy, 3), (round(row.ci_low, 3), round(row.ci_high, 3)), row.auroc
        (3, 0.667, (0.208, 0.939), 1.0)
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["benchmark"], record["method"]), []).append(record)
    summaries = []
    for (benchmark, method), rows in groups.items():
        n_items = len({r["item_id"] for r in rows})
        accuracy = statistics.fmean(bool(r["correct"]) for r in rows)
        low, high = wilson_interval(accuracy, n_items)
        summaries.append(
            MethodSummary(
                benchmark=benchmark,
                method=method,
                n_items=n_items,
                n_seeds=len({r["seed"] for r in rows}),
                accuracy=accuracy,
                ci_low=low,
                ci_high=high,
                tokens=statistics.fmean(r["tokens"] for r in rows),
                seconds=statistics.fmean(r["seconds"] for r in rows),
                flops=statistics.fmean(r["flops"] for r in rows),
                mean_entropy=statistics.fmean(r["mean_entropy"] for r in rows),
                auroc=auroc([-r["mean_entropy"] for r in rows], [bool(r["correct"]) for r in rows]),
                accuracy_std=_per_seed_accuracy_std(rows),
                tokens_per_s=_rate(sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)),
                pass_at_seeds=_pass_at_seeds(rows),
            )
        )
    return summaries


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def _methods_and_benchmarks(summaries: Sequence[MethodSummary]) -> tuple[list[str], list[str]]:
    methods = list(dict.fromkeys(s.method for s in summaries))
    benchmarks = list(dict.fromkeys(s.benchmark for s in summaries))
    return methods, benchmarks


def format_table(summaries: Sequence[MethodSummary], not_applicable: Iterable[tuple[str, str]] = ()) -> str:
    """Unreasonable Effectiveness of EM, Table 3 layout: one row per method, accuracy (%) per
    benchmark, and their average when there are several benchmarks. ``–`` marks (benchmark, method)
    pairs that do not apply (self-consistency on code) or were not run."""
    methods, benchmarks = _methods_and_benchmarks(summaries)
    for benchmark, method in not_applicable:
        if method not in methods:
            methods.append(method)
        if benchmark not in benchmarks:
            benchmarks.append(benchmark)
    cells = {(s.benchmark, s.method): s for s in summaries}
    average = len(benchmarks) > 1
    header = ["method", *benchmarks, *(["Avg."] if average else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        values = [cells[(b, method)].accuracy for b in benchmarks if (b, method) in cells]
        row = [method] + [
            f"{100 * cells[(b, method)].accuracy:.1f}" if (b, method) in cells else "–" for b in benchmarks
        ]
        if average:
            row.append(f"{100 * statistics.fmean(values):.1f}" if len(values) == len(benchmarks) else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_details(summaries: Sequence[MethodSummary]) -> str:
    """Every summary field: accuracy with its 95% Wilson interval, pass@n over the n seeds, items x
    seeds, and per-item cost."""
    lines = [
        "| benchmark | method | accuracy % [95% CI] | pass@seeds % | items x seeds | tokens / item "
        "| s / item | FLOPs / item | mean entropy (nats) | AUROC(-entropy) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        area = "n/a" if s.auroc is None else f"{s.auroc:.2f}"
        oracle = "–" if s.pass_at_seeds is None else f"{100 * s.pass_at_seeds:.1f}"
        lines.append(
            f"| {s.benchmark} | {s.method} "
            f"| {100 * s.accuracy:.1f} [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}] | {oracle} "
            f"| {s.n_items} x {s.n_seeds} | {s.tokens:.1f} | {s.seconds:.2f} | {s.flops:.3g} "
            f"| {s.mean_entropy:.3f} | {area} |"
        )
    return "\n".join(lines)


def format_seed_table(summaries: Sequence[MethodSummary]) -> str:
    """One row per method: accuracy as mean ± standard deviation over seeds, items x seeds, mean token
    entropy, generated tokens per answer and tokens per second (the ``em-hf demo`` table)."""
    lines = [
        "| method | accuracy (mean ± sd over seeds) | items x seeds | mean token entropy (nats) "
        "| tokens / answer | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.method} | {100 * s.accuracy:.1f}% ± {100 * s.accuracy_std:.1f} "
            f"| {s.n_items} x {s.n_seeds} | {s.mean_entropy:.3f} "
            f"| {s.tokens:.1f} | {s.tokens_per_s:.1f} |"
        )
    return "\n".join(lines)


def log_axis_ticks(low: float, high: float) -> list[float]:
    """Tick positions for a log axis over ``[low, high]`` (both > 0): powers of ten when the range spans
    three or more of them, else 1-2-5, 1-2-3-5 or (in a range narrow enough that they do not crowd)
    1-9 multiples, else (a range inside one step of those) evenly
    spaced round values, so that a short range still gets at least two ticks.

    Examples:
        >>> log_axis_ticks(1e9, 1e12)
        [1000000000.0, 10000000000.0, 100000000000.0, 1000000000000.0]
        >>> log_axis_ticks(1.5e10, 8e10)  # 1-9 multiples would crowd the upper end
        [20000000000.0, 30000000000.0, 50000000000.0]
        >>> log_axis_ticks(2.05e10, 2.4e10)
        [21000000000.0, 22000000000.0, 23000000000.0, 24000000000.0]
    """
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"`low` and `high` must satisfy 0 < low < high < inf, got {low!r} and {high!r}.")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for subs in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [float(m * 10.0**e) for e in range(first, last + 1) for m in subs]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= 3:
            return ticks
    # A short range: round values with a 1-2-5 spacing, the coarsest that gives 3 to 6 ticks (else 2).
    fallback = [low, high]
    for digits in range(1 - last, 16 - first):
        for step_mantissa in (5, 2, 1):
            step = step_mantissa * 10.0**-digits
            span = range(math.ceil(low / step), math.floor(high / step) + 1)
            ticks = [float(round(k * step, digits + 1)) for k in span]
            if 3 <= len(ticks) <= 6:
                return ticks
            if len(ticks) == 2 and fallback == [low, high]:
                fallback = ticks
    return fallback


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Short labels for ``ticks`` (``2e10``, ``2.1e10``): the fewest significant digits that tell every
    tick apart.

    Examples:
        >>> tick_labels([2.1e10, 2.2e10, 5e11])
        ['2.1e10', '2.2e10', '5.0e11']
        >>> tick_labels([1e9, 1e10])
        ['1e9', '1e10']
    """

    def label(value: float, digits: int) -> str:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"

    for digits in range(1, 8):
        labels = [label(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(t) for t in ticks]


def plot_accuracy_vs_flops(summaries: Sequence[MethodSummary], path: str | Path, title: str = "") -> Path:
    """Accuracy (with the 95% interval) against FLOPs per item, one panel per benchmark and one
    marker per method (Unreasonable Effectiveness of EM, Figure 1); saved to ``path`` (PNG/SVG/PDF by
    its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("The plot needs matplotlib: pip install 'em_hf[eval]'.") from error
    if not summaries:
        raise ValueError("`summaries` is empty: nothing to plot.")
    methods, benchmarks = _methods_and_benchmarks(summaries)
    markers = "osD^vP*Xh<>p"
    colors = plt.get_cmap("tab10")
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    legend_rows = (len(methods) + 3) // 4  # under the panels
    figure, axes = plt.subplots(
        1, len(benchmarks), figsize=(max(4.8, 4.2 * len(benchmarks)), 3.4 + 0.25 * legend_rows), squeeze=False
    )
    for axis, benchmark in zip(axes[0], benchmarks, strict=True):
        for index, method in enumerate(methods):
            rows = [s for s in summaries if s.benchmark == benchmark and s.method == method]
            if not rows:
                continue
            s = rows[0]
            axis.errorbar(
                s.flops,
                100 * s.accuracy,
                yerr=[[100 * (s.accuracy - s.ci_low)], [100 * (s.ci_high - s.accuracy)]],
                fmt=markers[index % len(markers)],
                color=colors(index % 10),
                capsize=3,
                label=method,
            )
        axis.set_xscale("log")
        ticks = log_axis_ticks(*axis.get_xlim())
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_major_formatter(FixedFormatter(tick_labels(ticks)))
        axis.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
        axis.set_xlabel("FLOPs per item (2PD)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(benchmark)
        axis.grid(True, alpha=0.3)
    legend: dict[str, object] = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), fontsize=8
    )
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.02 + 0.06 * legend_rows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
