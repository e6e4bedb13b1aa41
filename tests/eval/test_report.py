"""Report statistics against independent computations: AUROC by brute-force pair counting, the
Wilson interval from its closed form checked by the coverage identity, tables and the plot."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from em_hf.eval.report import (
    auroc,
    format_details,
    format_table,
    log_axis_ticks,
    plot_accuracy_vs_flops,
    summarize,
    tick_labels,
    wilson_interval,
)
from em_hf.metrics import pass_at_k


def _pairs_auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2: every pair."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(6))
def test_auroc_equals_the_pair_count(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 60)
    scores = [round(rng.gauss(0, 1), 1) for _ in range(n)]  # rounding makes ties
    labels = [rng.random() < 0.4 for _ in range(n)]
    labels[0], labels[1] = True, False
    assert auroc(scores, labels) == pytest.approx(_pairs_auroc(scores, labels), abs=1e-12)


def test_auroc_extremes_and_undefined():
    assert auroc([3, 2, 1], [True, True, False]) == 1.0
    assert auroc([1, 2, 3], [True, True, False]) == 0.0
    assert auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert auroc([1, 2], [True, True]) is None
    with pytest.raises(ValueError, match="length"):
        auroc([1, 2], [True])
    with pytest.raises(ValueError, match="finite"):
        auroc([math.nan, 1], [True, False])


@pytest.mark.parametrize(("p", "n"), [(0.0, 10), (0.3, 40), (0.5, 7), (1.0, 25), (0.9, 200)])
def test_wilson_interval_solves_the_score_equation(p, n):
    """The Wilson bounds are the proportions q with |p - q| = z sqrt(q(1-q)/n) (clamped to [0, 1])."""
    z = 1.959963984540054
    low, high = wilson_interval(p, n)
    assert 0.0 <= low <= p <= high <= 1.0
    for q in (low, high):
        if 0.0 < q < 1.0:
            assert abs(p - q) == pytest.approx(z * math.sqrt(q * (1 - q) / n), rel=1e-9)
    # 12 successes out of 40, by hand: center (0.3 + 0.048018) / 1.096037 = 0.317524, half-width
    # 1.96 * sqrt(0.00525 + 0.00060023) / 1.096037 = 0.136776 -> [0.18075, 0.45430].
    assert wilson_interval(0.3, 40) == pytest.approx((0.18075, 0.45430), abs=1e-4)


def test_wilson_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="`p`"):
        wilson_interval(1.5, 10)
    with pytest.raises(ValueError, match="`n`"):
        wilson_interval(0.5, 0)


def _record(benchmark, method, seed, item, correct, entropy, tokens=10, flops=100.0):
    return {
        "benchmark": benchmark,
        "method": method,
        "seed": seed,
        "item_id": item,
        "correct": correct,
        "mean_entropy": entropy,
        "tokens": tokens,
        "seconds": 0.5,
        "flops": flops,
    }


def test_summarize_groups_and_averages():
    records = [
        _record("amc", "greedy", 0, "a", True, 0.1),
        _record("amc", "greedy", 0, "b", False, 0.9),
        _record("amc", "sample", 0, "a", True, 0.2, tokens=20),
        _record("amc", "sample", 1, "a", False, 0.4, tokens=40),
        _record("amc", "sample", 0, "b", False, 0.8),
        _record("amc", "sample", 1, "b", True, 0.3),
    ]
    greedy, sample = summarize(records)
    assert (greedy.method, greedy.n_items, greedy.n_seeds, greedy.accuracy) == ("greedy", 2, 1, 0.5)
    assert greedy.auroc == 1.0  # the correct answer has the lower entropy
    assert (sample.n_items, sample.n_seeds, sample.accuracy) == (2, 2, 0.5)
    assert sample.tokens == pytest.approx((20 + 40 + 10 + 10) / 4)
    assert sample.auroc == pytest.approx(_pairs_auroc([-0.2, -0.4, -0.8, -0.3], [True, False, False, True]))
    assert (sample.ci_low, sample.ci_high) == pytest.approx(wilson_interval(0.5, 2))  # n = items, not records
    # pass@2 over the two seeds: each item is solved by one of its two seeds -> 1.0; one seed -> None.
    assert sample.pass_at_seeds == 1.0 and greedy.pass_at_seeds is None
    assert sample.accuracy_std == 0.0  # seed 0: 1/2, seed 1: 1/2


def test_pass_at_seeds_is_the_unbiased_estimator_averaged_over_items():
    records = [
        _record("amc", "sample", seed, item, correct, 0.1)
        for item, outcomes in (("a", (True, False, False)), ("b", (False, False, False)), ("c", (True,) * 3))
        for seed, correct in enumerate(outcomes)
    ]
    (summary,) = summarize(records)
    assert summary.pass_at_seeds == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert pass_at_k(3, 1, 2) == pytest.approx(1 - math.comb(2, 2) / math.comb(3, 2))
    assert summary.accuracy_std == pytest.approx(statistics.stdev([2 / 3, 1 / 3, 1 / 3]))  # per-seed accuracy
    assert "| 66.7 |" in format_details([summary])


def test_table_has_the_paper_layout_and_dashes():
    records = [
        _record("math500", "greedy", 0, "a", True, 0.1),
        _record("math500", "sc:4", 0, "a", False, 0.1),
        _record("leetcode", "greedy", 0, "x", False, 0.1),
    ]
    summaries = summarize(records)
    table = format_table(summaries, not_applicable=[("leetcode", "sc:4")]).splitlines()
    assert table[0] == "| method | math500 | leetcode | Avg. |"
    assert table[2] == "| greedy | 100.0 | 0.0 | 50.0 |"
    assert table[3] == "| sc:4 | 0.0 | – | – |"
    details = format_details(summaries)
    assert "| math500 | greedy | 100.0 [" in details and "n/a" in details


def test_plot_is_written(tmp_path):
    records = [
        _record("amc", m, 0, str(i), i % 2 == 0, 0.1 * i, flops=f)
        for m, f in (("greedy", 1e9), ("sc:4", 4e9))
        for i in range(4)
    ]
    path = plot_accuracy_vs_flops(summarize(records), tmp_path / "plot.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_vs_flops([], tmp_path / "x.png")


@pytest.mark.parametrize(
    "low, high",
    [(1e9, 1e12), (2.05e10, 2.4e10), (8e10, 3.5e11), (2e10, 3.5e10), (1.0e10, 1.01e10), (3e9, 9e9)],
)
def test_log_axis_ticks_fall_in_the_range_and_have_distinct_labels(low, high):
    ticks = log_axis_ticks(low, high)
    labels = tick_labels(ticks)
    assert 2 <= len(ticks) <= 9 and ticks == sorted(ticks)
    assert all(low <= t <= high for t in ticks)
    assert len(set(labels)) == len(labels)
    for tick, label in zip(ticks, labels, strict=True):  # a label reads back as its tick, to its digits
        assert math.isclose(float(label), tick, rel_tol=0.05)
    with pytest.raises(ValueError, match="0 < low < high"):
        log_axis_ticks(5.0, 5.0)


def test_plot_x_labels_are_distinct_on_a_narrow_flops_range(tmp_path, monkeypatch):
    """Methods within one 1-9 step of FLOPs (as arithmetic runs are) used to get identical labels."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    records = [
        _record("arithmetic", m, 0, str(i), i % 2 == 0, 0.1 * i, flops=f)
        for m, f in (("greedy", 2.05e10), ("sample", 2.2e10), ("em-inf", 2.4e10))
        for i in range(4)
    ]
    plot_accuracy_vs_flops(summarize(records), tmp_path / "plot.png")
    (axis,) = [a for a in figures[0].axes if a.get_title() == "arithmetic"]
    low, high = axis.get_xlim()
    labels = [t.get_text() for t in axis.get_xticklabels() if low <= t.get_position()[0] <= high]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
