"""The collapse guard on the README's one-shot EM run (default model, arithmetic).

    python examples/collapse_guard_arithmetic.py --learning-rate 2e-5   # the collapsing run
    python examples/collapse_guard_arithmetic.py --learning-rate 2e-6   # a run that does not collapse
    python examples/collapse_guard_arithmetic.py --replay runs/collapse_guard/result.json  # re-judge a run

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
import ast
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
    parser.add_argument("--replay", default=None, help="re-apply the guard to a run's result.json or log")
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    prompt = ArithmeticProblem(id="train", question=args.question, answer=args.answer).messages
    benchmark = BenchmarkEarlyStoppingCallback(
        arithmetic_evaluator(args.items, method="greedy"), eval_steps=args.eval_every, save_best=False
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
    history = [{"step": r["step"], **{key: r[key] for key in SIGNALS if key in r}} for r in guard.history]
    print_table(args.learning_rate, history, accuracy, guard_config)
    print(f"Total wall time {time.perf_counter() - start:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": vars(args), "fired_at": guard.fired_at, "accuracy": accuracy, "history": history}
    (out / "result.json").write_text(json.dumps(record, indent=2))


def print_table(learning_rate: float, history: list[dict], accuracy: dict[int, float], config) -> None:
    """One markdown row per step: the signals, greedy accuracy after the step, the guard's verdict."""
    fired = next(
        (r["step"] for i, r in enumerate(history) if detect_collapse(history[: i + 1], config).collapsed),
        None,
    )
    print(
        f"lr {learning_rate:g}; greedy accuracy before training "
        f"{'not logged' if 0 not in accuracy else f'{100 * accuracy[0]:.1f}%'}; "
        f"guard fires at step {fired}"
    )
    print(
        "| step | entropy | distinct answers | length | repeated 4-grams | greedy acc. after step "
        "| symptoms | fires |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(history):
        verdict = detect_collapse(history[: i + 1], config)
        after = accuracy.get(row["step"])
        print(
            f"| {row['step']} | {row['entropy']:.4f} | {row['completions/distinct_answers']:.2f} "
            f"| {row['completions/mean_length']:.1f} | {row['completions/repeated_ngram_share']:.3f} "
            f"| {'-' if after is None else f'{100 * after:.1f}%'} "
            f"| {', '.join(name for name, hit in verdict.symptoms.items() if hit) or '-'} "
            f"| {'**yes**' if row['step'] == fired else ''} |"
        )


def replay(path: str) -> None:
    """Re-apply the guard's current default thresholds to a finished run's result.json (or, for a run that
    was stopped, to the progress lines of its log)."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        record = json.loads(text)
        accuracy = {int(step): value for step, value in record["accuracy"].items()}
        history, learning_rate = record["history"], record["settings"]["learning_rate"]
    else:  # a log: "step N: {signals} greedy accuracy after step: X ..." lines
        history, accuracy, learning_rate = [], {}, float("nan")
        for line in text.splitlines():
            if line.startswith("step ") and ": {" in line:
                step = int(line.split(":")[0].split()[1])
                signals = ast.literal_eval(line[line.index("{") : line.index("}") + 1])
                history.append({"step": step, **signals})
                value = line.split("greedy accuracy after step: ")[1].split()[0]
                if value != "None":
                    accuracy[step] = float(value)
    print_table(learning_rate, history, accuracy, CollapseGuardConfig(metric=None))


if __name__ == "__main__":
    main()
