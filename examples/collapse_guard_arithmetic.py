"""The collapse guard on the README's one-shot EM run (default model, arithmetic).

    python examples/collapse_guard_arithmetic.py --learning-rate 2e-5   # the collapsing run
    python examples/collapse_guard_arithmetic.py --learning-rate 2e-6   # a run that does not collapse

The one-shot run of examples/one_shot_em_arithmetic.py without the prompt search (the prompt that search
picks, "Compute 12 - 11 + 10.", is given): 10 steps of EntropyMinConfig.one_shot with 16 samples per
step and completions of at most 48 tokens, greedy accuracy on the 60 arithmetic items before training and
after every step (BenchmarkEarlyStoppingCallback). The guard runs with action "warn" so that the run goes
on and shows what it would have stopped, and with ``metric=None``: it sees only the label-free signals
(entropy, distinct answers, completion length, repeated n-grams), never the accuracy. Prints one row per
step (the signals, greedy accuracy, the guard's verdict) and writes them to ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from em_hf.data.arithmetic import ArithmeticProblem
from em_hf.eval.evaluators import arithmetic_evaluator
from em_hf.models import load_model
from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback
from em_hf.trainers.collapse_guard import CollapseGuardCallback, CollapseGuardConfig, detect_collapse


class _Progress(TrainerCallback):
    """Prints each step's signals, greedy accuracy and the guard's state as soon as they are known."""

    def __init__(self, benchmark, guard):
        self.benchmark, self.guard = benchmark, guard

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.guard.history and self.guard.history[-1]["step"] == state.global_step and "entropy" in logs:
            accuracy = {r.step: r.value for r in self.benchmark.history}.get(state.global_step)
            signals = {key: round(self.guard.history[-1].get(key, float("nan")), 4) for key in SIGNALS}
            hits = [name for name, hit in self.guard.verdict.symptoms.items() if hit]
            print(
                f"step {state.global_step}: {signals} greedy accuracy after step: {accuracy} "
                f"symptoms: {hits} fired_at: {self.guard.fired_at}",
                flush=True,
            )


SIGNALS = (
    "entropy",
    "completions/distinct_answers",
    "completions/mean_length",
    "completions/repeated_ngram_share",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--question", default="Compute 12 - 11 + 10.")
    parser.add_argument("--answer", type=int, default=11)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=1, help="greedy accuracy every N steps")
    parser.add_argument("--out", default="runs/collapse_guard")
    args = parser.parse_args()

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    prompt = ArithmeticProblem(id="train", question=args.question, answer=args.answer).messages
    benchmark = BenchmarkEarlyStoppingCallback(
        arithmetic_evaluator(args.items, method="greedy"), save_best=False
    )
    guard_config = CollapseGuardConfig(metric=None)  # label-free: the guard never sees the accuracy
    guard = CollapseGuardCallback(guard_config, action="warn")
    with tempfile.TemporaryDirectory() as scratch:
        config = EntropyMinConfig.one_shot(
            output_dir=scratch,
            num_generations=args.samples,
            per_device_train_batch_size=args.samples,
            max_completion_length=args.max_completion_length,
            max_steps=args.steps,
            learning_rate=args.learning_rate,
            report_to=[],
            save_strategy="no",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = EntropyMinTrainer(
            model=model,
            args=config,
            train_dataset=[{"prompt": prompt}],
            processing_class=tokenizer,
            callbacks=[benchmark, guard, _Progress(benchmark, guard)],
        )
        trainer.train()
    accuracy = {record.step: record.value for record in benchmark.history}
    rows = []
    for i, record in enumerate(guard.history):
        verdict = detect_collapse(guard.history[: i + 1], guard_config)
        step = record["step"]
        rows.append(
            {
                "step": step,
                **{key: record.get(key) for key in SIGNALS},
                "greedy_accuracy_before_step": accuracy.get(step - 1),
                "greedy_accuracy_after_step": accuracy.get(step),
                "symptoms": [name for name, hit in verdict.symptoms.items() if hit],
                "collapsed": verdict.collapsed,
            }
        )
    print(
        f"lr {args.learning_rate:g}; base greedy accuracy {100 * accuracy[0]:.1f}%; "
        f"guard fired at step {guard.fired_at}"
    )
    print(
        "| step | entropy | distinct answers | length | repeated 4-grams | greedy acc. after step "
        "| symptoms | fires |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        after = row["greedy_accuracy_after_step"]
        print(
            f"| {row['step']} | {row['entropy']:.4f} | {row['completions/distinct_answers']:.2f} "
            f"| {row['completions/mean_length']:.1f} | {row['completions/repeated_ngram_share']:.3f} "
            f"| {'-' if after is None else f'{100 * after:.1f}%'} | {', '.join(row['symptoms']) or '-'} "
            f"| {'**yes**' if row['step'] == guard.fired_at else ''} |"
        )
    print(f"Total wall time {time.perf_counter() - start:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": vars(args), "fired_at": guard.fired_at, "accuracy": accuracy, "rows": rows}
    (out / "result.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
