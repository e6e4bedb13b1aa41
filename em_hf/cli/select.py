"""``em-hf select``: rank candidate prompts by pass@k variance (One-shot Entropy Minimization,
section 2.2: the prompt on which the model is least consistent is the one to train on)."""

from __future__ import annotations

import argparse
import json

from em_hf.cli import options

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "read_candidates", "run"]

HELP = "rank prompts by pass@k variance (one-shot EM's prompt selection)"
DESCRIPTION = (
    "Sample k answers per candidate prompt, grade them, and print the prompts ranked by the variance "
    "p(1-p) of their pass rate (One-shot Entropy Minimization, sec. 2.2). Candidates: a JSONL file with "
    "'prompt' (a string, used as it is, or chat messages, rendered with the chat template) and 'answer' "
    "fields, or generated arithmetic problems."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``em-hf select``."""
    options.add_model_options(parser, quantize=False)
    parser.add_argument(
        "--data", default=None, help="JSONL file of {'prompt', 'answer'} (default: arithmetic)"
    )
    options.add_option(parser, "--candidates", 24, "arithmetic candidates", type=options.positive_int)
    options.add_option(parser, "--k", 8, "samples per prompt", type=options.positive_int)
    options.add_option(parser, "--temperature", 1.0, "sampling temperature", type=float)
    options.add_generation_options(parser, max_new_tokens=256, batch_size=64, threads=False)
    options.add_option(parser, "--top", 10, "rows to print", type=options.positive_int)
    options.add_option(parser, "--seed", 0, "sampling seed", type=int)
    parser.add_argument(
        "--output", default=None, help="also write all ranked rows to this JSONL file (default: none)"
    )


def read_candidates(path: str) -> tuple[list, list]:
    """Prompts and answers of a JSONL file of ``{"prompt": ..., "answer": ...}`` records."""
    prompts, answers = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "prompt" not in record or "answer" not in record:
                raise SystemExit(f"{path}:{number}: each line needs 'prompt' and 'answer' fields.")
            prompts.append(record["prompt"])
            answers.append(record["answer"])
    if not prompts:
        raise SystemExit(f"{path} holds no candidate prompt.")
    return prompts, answers


def run(args: argparse.Namespace) -> int:
    """Run ``em-hf select`` from parsed arguments; prints the ranking (and writes ``--output``)."""
    from em_hf.data import make_arithmetic_problems, select_by_pass_variance
    from em_hf.models import load_model
    from em_hf.utils.files import atomic_write_text

    if args.data is not None:
        prompts, answers = read_candidates(args.data)
    else:
        problems = make_arithmetic_problems(args.candidates, seed=1000)
        prompts, answers = [p.messages for p in problems], [p.answer for p in problems]
    model, tokenizer = load_model(args.model)
    ranked = select_by_pass_variance(
        model,
        tokenizer,
        prompts,
        answers,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        **options.generation_kwargs(args),
    )
    print("| rank | prompt | answer | pass rate | variance |")
    print("|---|---|---|---|---|")
    for rank, row in enumerate(ranked[: args.top], start=1):
        text = row.prompt if isinstance(row.prompt, str) else row.prompt[-1]["content"]
        print(f"| {rank} | {text[:80]!r} | {row.answer} | {row.pass_rate:.3f} | {row.variance:.3f} |")
    if args.output:
        lines = []
        for row in ranked:
            record = {"index": row.index, "prompt": row.prompt, "answer": row.answer}
            record.update(pass_rate=row.pass_rate, variance=row.variance, completions=list(row.completions))
            lines.append(json.dumps(record) + "\n")
        atomic_write_text(args.output, "".join(lines))  # whole or not at all
    return 0
