"""The pre-flight: confidence signals against a float64 reference, its statistics against independent
computations, the verdicts, and ``em-hf preflight`` on a tiny model."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from em_hf.cli import main
from em_hf.eval.confidence import SIGNALS, score_completions, vote_shares
from em_hf.eval.preflight import (
    Estimate,
    bootstrap_interval,
    preflight_statistics,
    run_preflight,
    verdict,
)
from em_hf.generation.prompts import render_prompt
from tests.helpers import make_tiny_llama, make_word_tokenizer


# ------------------------------------------------------------------------------------------ signals
def test_score_completions_matches_a_float64_reference_per_sequence():
    model, tokenizer = make_tiny_llama(sharpen=4.0), make_word_tokenizer()
    prompts = ["Compute 1 + 2 .", [{"role": "user", "content": "the answer is"}], "3 - 1 ="]
    completions = ["3 4 5", "7", ""]  # different lengths (left padding in one batch); "" scores EOS
    scores = score_completions(model, tokenizer, prompts, completions, batch_size=2)
    model64 = make_tiny_llama(sharpen=4.0).double()
    for prompt, text, score in zip(prompts, completions, scores, strict=True):
        prompt_ids = render_prompt(tokenizer, prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model64(torch.tensor([prompt_ids + ids])).logits[0]
        rows = logits[len(prompt_ids) - 1 : -1]  # the positions that predict the completion
        p = rows.softmax(-1)
        vocab = rows.shape[-1]
        entropy = -(p * p.log()).sum(-1)
        kl_uniform = ((1.0 / vocab) * (math.log(1.0 / vocab) - p.log())).sum(-1)  # KL(U || p) by definition
        logprob = p.log()[torch.arange(len(ids)), torch.tensor(ids)].sum()
        assert score.num_tokens == len(ids)
        assert score.neg_entropy == pytest.approx(-entropy.mean().item(), abs=1e-4)
        assert score.self_certainty == pytest.approx(kl_uniform.mean().item(), abs=1e-4)
        assert score.sequence_logprob == pytest.approx(logprob.item(), abs=1e-3)


def test_score_completions_errors():
    model, tokenizer = make_tiny_llama(), make_word_tokenizer()
    with pytest.raises(ValueError, match="same length"):
        score_completions(model, tokenizer, ["a"], ["1", "2"])
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        score_completions(model, tokenizer, ["a"], ["1"], batch_size=0)


def test_vote_shares():
    assert vote_shares(["5", None, "5", "6", "5"]) == [0.6, 0.2, 0.6, 0.2, 0.6]
    with pytest.raises(ValueError, match="empty"):
        vote_shares([])


# ------------------------------------------------------------------------------------------ statistics
def _pairwise_auroc(scores, labels):
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def _samples(n_items=60, k=4, seed=0):
    rng = random.Random(seed)
    samples = []
    for i in range(n_items):
        skill = rng.random()
        group = []
        for _ in range(k):
            correct = rng.random() < skill
            group.append(
                {
                    "item_id": str(i),
                    "correct": correct,
                    "neg_entropy": -rng.random() - (0.0 if correct else 0.5),  # tracks correctness
                    "self_certainty": rng.random(),  # noise
                    "sequence_logprob": -rng.random() - (0.5 if correct else 0.0),  # anti-correlated
                    "vote_share": rng.choice([0.25, 0.5, 0.75, 1.0]),  # ties
                }
            )
        samples.append(group)
    return samples


def test_preflight_statistics_match_independent_computations():
    samples = _samples()
    greedy = [i % 3 == 0 for i in range(len(samples))]
    report = preflight_statistics(greedy, samples, resamples=300, seed=1)
    k, n = 4, len(samples)
    rates = [sum(r["correct"] for r in g) / k for g in samples]
    assert report.sampled_accuracy.value == pytest.approx(sum(rates) / n)
    assert report.pass_variance.value == pytest.approx(sum(p * (1 - p) for p in rates) / n)
    assert report.pass_at_k.value == pytest.approx(sum(p > 0 for p in rates) / n)  # pass@k with n = k
    # Greedy: the Wilson interval by its formula.
    p, z = 20 / 60, 1.959963984540054
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert report.greedy_accuracy.value == pytest.approx(p)
    assert (report.greedy_accuracy.low, report.greedy_accuracy.high) == pytest.approx(
        (center - half, center + half)
    )
    flat = [r for g in samples for r in g]
    labels = [r["correct"] for r in flat]
    for name in SIGNALS:
        estimate = report.auroc[name]
        assert estimate.value == pytest.approx(_pairwise_auroc([r[name] for r in flat], labels))
        assert estimate.low <= estimate.value <= estimate.high and estimate.method == "bootstrap"
        assert sum(count for _, _, count in report.deciles[name]) == len(flat)
    # Deciles are ordered by the signal; their accuracies average back to the sampled accuracy.
    bins = report.deciles["neg_entropy"]
    assert [b[0] for b in bins] == sorted(b[0] for b in bins)
    total = sum(acc * count for _, acc, count in bins) / len(flat)
    assert total == pytest.approx(report.sampled_accuracy.value)
    assert report.verdicts["neg_entropy"].startswith("minus mean token entropy (RENT): confidence tracks")
    assert "not expected to help" in report.verdicts["self_certainty"]
    assert "higher on WRONG answers" in report.verdicts["sequence_logprob"]


def test_bootstrap_interval_agrees_with_the_normal_approximation():
    rng = random.Random(3)
    values = [float(rng.random() < 0.3) for _ in range(2000)]
    p = sum(values) / len(values)
    low, high = bootstrap_interval(values, lambda xs: sum(xs) / len(xs), resamples=1000, seed=0)
    half = 1.96 * math.sqrt(p * (1 - p) / len(values))
    assert low == pytest.approx(p - half, abs=0.006) and high == pytest.approx(p + half, abs=0.006)
    assert bootstrap_interval([1, 2], lambda xs: None) == (None, None)
    with pytest.raises(ValueError, match="`resamples` must be an integer >= 1"):
        bootstrap_interval([1], sum, resamples=0)


def test_undefined_auroc_and_input_errors():
    samples = [[{"correct": False, **{s: 0.0 for s in SIGNALS}}] * 2 for _ in range(3)]
    report = preflight_statistics([False] * 3, samples, resamples=20)
    assert report.auroc["vote_share"] == Estimate(None, None, None, "bootstrap")
    assert "undefined" in report.verdicts["vote_share"]
    with pytest.raises(ValueError, match="same number k"):
        preflight_statistics([False, False], [samples[0], samples[0][:1]])
    with pytest.raises(ValueError, match="must be non-empty and match"):
        preflight_statistics([False], samples)
    bad = [[{"correct": True, **{s: float("nan") for s in SIGNALS}}]]
    with pytest.raises(ValueError, match="non-finite"):
        preflight_statistics([True], bad)


@pytest.mark.parametrize(
    ("estimate", "words"),
    [
        (Estimate(0.74, 0.66, 0.81, "bootstrap"), "confidence tracks correctness: AUROC 0.74 [0.66, 0.81]"),
        (Estimate(0.6, 0.55, 0.65, "bootstrap"), "tracks correctness, weakly"),
        (Estimate(0.52, 0.45, 0.6, "bootstrap"), "does not track correctness"),
        (Estimate(0.3, 0.2, 0.4, "bootstrap"), "EM is expected to hurt here"),
    ],
)
def test_verdict_words(estimate, words):
    assert words in verdict("self_certainty", estimate)


# ------------------------------------------------------------------------------------------ end to end
def test_run_preflight_on_a_tiny_model():
    model, tokenizer = make_tiny_llama(sharpen=4.0), make_word_tokenizer()
    report = run_preflight(
        model, tokenizer, "arithmetic:n=10", num_items=5, k=3, max_new_tokens=3, resamples=30
    )
    assert report.settings["items"] == 5 and report.settings["k"] == 3 and len(report.samples) == 15
    assert len({r["item_id"] for r in report.samples}) == 5
    assert all(r["tokens"] >= 1 and math.isfinite(r["self_certainty"]) for r in report.samples)
    with pytest.raises(ValueError, match="`k` must be an integer >= 2"):
        run_preflight(model, tokenizer, "arithmetic:n=4", k=1)


def test_cli_writes_the_report_and_the_plot(tmp_path, capsys):
    folder = tmp_path / "tiny"
    make_tiny_llama(sharpen=4.0).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    code = main(
        ["preflight", "--model", str(folder), "--benchmark", "arithmetic:n=6", "--items", "4", "--k", "2",
         "--max-new-tokens", "3", "--bootstrap", "20", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| greedy accuracy |" in printed and "- self-certainty (INTUITOR):" in printed
    record = json.loads((out / "preflight.json").read_text())
    assert record["settings"]["items"] == 4 and len(record["samples"]) == 8
    assert set(record["auroc"]) == set(SIGNALS)
    assert (out / "preflight.png").stat().st_size > 0
