"""One-shot EM end to end on the package's arithmetic set (the training stage of ``em-hf demo``).

1. Candidate prompts (arithmetic problems that are NOT in the evaluation set) are ranked by pass@k
   variance (:func:`em_hf.data.select_by_pass_variance`, One-shot EM sec. 2.2); the top one is the single
   training prompt.
2. The model is scored on the evaluation set with several decoding methods
   (:func:`em_hf.demos.decoding.run_demo`).
3. :class:`~em_hf.trainers.EntropyMinTrainer` trains it with :meth:`EntropyMinConfig.one_shot` (One-shot
   EM's hyperparameters; fewer samples per step and shorter completions, as CPU time demands), evaluating
   greedy accuracy during training with :class:`~em_hf.trainers.BenchmarkEarlyStoppingCallback`.
4. The trained model is scored again with the same methods and seeds.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from em_hf.data.arithmetic import make_arithmetic_problems
from em_hf.data.selection import PromptPassVariance, select_by_pass_variance
from em_hf.demos.decoding import run_demo
from em_hf.eval.evaluators import arithmetic_evaluator
from em_hf.eval.report import MethodSummary
from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback, BenchmarkRecord
from em_hf.trainers.em_config import EntropyMinConfig
from em_hf.trainers.em_trainer import EntropyMinTrainer

__all__ = ["OneShotDemoResult", "format_one_shot_report", "run_one_shot_demo", "select_one_shot_prompt"]


@dataclass
class OneShotDemoResult:
    """What :func:`run_one_shot_demo` measured (:func:`format_one_shot_report` renders it).

    Parameters:
        selected (`PromptPassVariance`):
            The training prompt: the candidate with the highest pass@k variance.
        candidates (`list[PromptPassVariance]`):
            Every candidate, ranked (highest variance first).
        before (`list[MethodSummary]`):
            Accuracy of each evaluation method before training (benchmark ``"arithmetic"``).
        after (`list[MethodSummary]`):
            The same after training.
        during (`list[BenchmarkRecord]`):
            Greedy accuracy after each evaluated step (step 0: the base model).
        train_log (`list[dict[str, Any]]`):
            The trainer's per-step log (loss, entropy, completion lengths, ...).
        train_seconds (`float`):
            Wall time of ``trainer.train()``.
        peak_rss_mib (`float`):
            The process's peak resident memory after training, MiB.
        settings (`dict[str, Any]`, *optional*, defaults to `{}`):
            The run's settings, for the report.

    Examples:
        >>> from em_hf.demos.one_shot import OneShotDemoResult
        >>> sorted(OneShotDemoResult.__dataclass_fields__)[:3]
        ['after', 'before', 'candidates']
    """

    selected: PromptPassVariance
    candidates: list[PromptPassVariance]
    before: list[MethodSummary]
    after: list[MethodSummary]
    during: list[BenchmarkRecord]  # greedy accuracy after each evaluated step
    train_log: list[dict[str, Any]]
    train_seconds: float
    peak_rss_mib: float
    settings: dict[str, Any] = field(default_factory=dict)


def _questions(problems) -> set[str]:
    return {problem.prompt for problem in problems}


def select_one_shot_prompt(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_candidates: int = 24,
    *,
    exclude_items: int = 60,
    candidate_seed: int = 1000,
    **selection,
) -> list[PromptPassVariance]:
    """Rank ``num_candidates`` arithmetic problems (none of the first ``exclude_items`` evaluation
    problems) by pass@k variance; highest first. ``selection`` goes to
    :func:`~em_hf.data.selection.select_by_pass_variance` (``k``, ``max_new_tokens`` (default 32 here),
    ``batch_size`` (default 64 here), ``progress``, ...)."""
    selection = {"max_new_tokens": 32, "batch_size": 64, **selection}
    excluded = _questions(make_arithmetic_problems(exclude_items, seed=0))
    pool = [
        p
        for p in make_arithmetic_problems(num_candidates + exclude_items, seed=candidate_seed)
        if p.prompt not in excluded
    ]
    pool = pool[:num_candidates]
    return select_by_pass_variance(
        model,
        tokenizer,
        [problem.messages for problem in pool],
        [problem.answer for problem in pool],
        **selection,
    )


def run_one_shot_demo(
    model,
    tokenizer,
    steps: int = 10,
    samples_per_step: int = 16,
    micro_batch: int = 16,
    max_completion_length: int = 48,
    num_candidates: int = 24,
    k: int = 8,
    eval_items: int = 60,
    eval_methods: Sequence[str] = ("greedy", "sample:t=0.5", "sample"),
    seeds: Sequence[int] = (0, 1, 2),
    eval_every: int = 1,
    learning_rate: float = 2e-5,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    output_dir: str | None = None,
    progress: bool = True,
    collapse_guard_action: str = "warn",
) -> OneShotDemoResult:
    """Steps 1-4 of the module docstring; ``model`` is trained in place. The preset's collapse guard
    (:mod:`em_hf.trainers.collapse_guard`) warns by default (``collapse_guard_action="warn"``) and lets the
    demo run all its steps; ``"stop"``/``"restore"`` stop it as the preset would."""
    if samples_per_step % micro_batch != 0:
        raise ValueError(
            f"`samples_per_step` ({samples_per_step}) must be a multiple of `micro_batch` ({micro_batch})."
        )
    log = print if progress else (lambda *a, **k: None)
    log("one-shot EM: ranking candidate prompts by pass@k variance ...", file=sys.stderr)
    candidates = select_one_shot_prompt(
        model,
        tokenizer,
        num_candidates,
        exclude_items=eval_items,
        k=k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    selected = candidates[0]
    log(f"selected: {selected.prompt[-1]['content']!r} (pass rate {selected.pass_rate:.2f})", file=sys.stderr)
    common = {
        "n_items": eval_items,
        "seeds": seeds,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    before = run_demo(model, tokenizer, methods=eval_methods, progress=progress, **common)
    callback = BenchmarkEarlyStoppingCallback(
        arithmetic_evaluator(
            eval_items, method="greedy", max_new_tokens=max_new_tokens, batch_size=batch_size
        ),
        eval_steps=eval_every,
        evaluate_at_start=False,
        save_best=False,
    )
    with tempfile.TemporaryDirectory() as scratch:
        config = EntropyMinConfig.one_shot(
            output_dir=output_dir or scratch,
            num_generations=samples_per_step,
            per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=samples_per_step // micro_batch,
            max_completion_length=max_completion_length,
            max_steps=steps,
            learning_rate=learning_rate,
            collapse_guard_action=collapse_guard_action,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not progress,
        )
        trainer = EntropyMinTrainer(
            model=model,
            args=config,
            train_dataset=[{"prompt": selected.prompt}],
            processing_class=tokenizer,
            callbacks=[callback],
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    model.eval()
    after = run_demo(model, tokenizer, methods=eval_methods, progress=progress, **common)
    return OneShotDemoResult(
        selected=selected,
        candidates=candidates,
        before=before,
        after=after,
        during=callback.history,
        train_log=[entry for entry in trainer.state.log_history if "loss" in entry],
        train_seconds=train_seconds,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        settings={
            "steps": steps,
            "samples_per_step": samples_per_step,
            "micro_batch": micro_batch,
            "max_completion_length": max_completion_length,
            "candidates": num_candidates,
            "k": k,
            "eval_items": eval_items,
            "seeds": list(seeds),
            "learning_rate": learning_rate,
        },
    )


def format_one_shot_report(result: OneShotDemoResult) -> str:
    """Markdown: the selected prompt, accuracy before/after per method, and the per-step training log."""
    s, chosen = result.settings, result.selected
    lines = [
        f"One-shot EM on {chosen.prompt[-1]['content']!r} (answer {chosen.answer}; sampled pass "
        f"rate {chosen.pass_rate:.2f}, variance {chosen.variance:.3f}, best of "
        f"{s['candidates']} candidates x {s['k']} samples), {s['steps']} steps x "
        f"{s['samples_per_step']} samples (paper: 64), completions <= {s['max_completion_length']} tokens, "
        "T = 0.5 in sampling and entropy, "
        f"AdamW lr {s['learning_rate']:g} (constant).",
        "",
        "| method | accuracy before | accuracy after | entropy before | entropy after | items x seeds |",
        "|---|---|---|---|---|---|",
    ]
    for before, after in zip(result.before, result.after, strict=True):
        lines.append(
            f"| {before.method} | {100 * before.accuracy:.1f}% ± {100 * before.accuracy_std:.1f} "
            f"| {100 * after.accuracy:.1f}% ± {100 * after.accuracy_std:.1f} "
            f"| {before.mean_entropy:.3f} | {after.mean_entropy:.3f} | {before.n_items} x {before.n_seeds} |"
        )
    during = {record.step: record for record in result.during}
    lines += [
        "",
        "| step | loss (entropy at T=0.5) | completion tokens | step time (s) | greedy accuracy |",
        "|---|---|---|---|---|",
    ]
    for entry in result.train_log:
        record = during.get(entry["step"])
        accuracy = f"{100 * record.value:.1f}%" if record is not None else "-"
        lines.append(
            f"| {entry['step']} | {entry['loss']:.4f} "
            f"| {entry.get('completions/mean_length', float('nan')):.1f} "
            f"| {entry.get('step_time', float('nan')):.1f} | {accuracy} |"
        )
    lines.append("")
    lines.append(
        f"Training {result.train_seconds:.0f} s; peak resident memory of the process "
        f"{result.peak_rss_mib:.0f} MiB."
    )
    return "\n".join(lines)
