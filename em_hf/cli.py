"""The ``em-hf`` command line. Subcommands: ``demo``, ``eval``, ``select``, ``build-ops``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _method(text: str) -> str:
    from em_hf.generation.decoding import parse_method

    try:
        parse_method(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    from em_hf.demo import DEFAULT_DEMO_METHODS

    parser = argparse.ArgumentParser(prog="em-hf", description="Entropy minimization for LLM reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="compare decoding methods (sampling, greedy, adaptive temperature, EM-INF) on arithmetic",
        description="Load a model (default: the embedded SmolLM2-135M-Instruct) and compare decoding methods "
        "on the package's arithmetic benchmark; prints a markdown table.",
    )
    demo.add_argument(
        "--model", default="default", help="'default' or a model id/folder (default: %(default)s)"
    )
    demo.add_argument(
        "--load-in-8bit", action="store_true", help="quantize the model to 8-bit (bitsandbytes)"
    )
    demo.add_argument(
        "--methods",
        type=_method,
        nargs="+",
        default=list(DEFAULT_DEMO_METHODS),
        help="decoding methods, each NAME[:key=value,...] with NAME in greedy, sample, adaptive, em-inf; "
        "t= is the sampling temperature, other keys go to the method's processor, e.g. "
        "--methods sample em-inf:t=0.1,n_steps=5 (default: %(default)s)",
    )
    demo.add_argument(
        "--items", type=_positive_int, default=60, help="arithmetic problems (default: %(default)s)"
    )
    demo.add_argument(
        "--seeds", type=_positive_int, default=3, help="seeds per sampled method (default: %(default)s)"
    )
    demo.add_argument("--max-new-tokens", type=_positive_int, default=32, help="(default: %(default)s)")
    demo.add_argument("--batch-size", type=_positive_int, default=64, help="(default: %(default)s)")
    demo.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument(
        "--one-shot-steps",
        type=_non_negative_int,
        default=10,
        help="training stage: one-shot EM steps on the prompt chosen by pass@k variance, then the methods "
        "again on the trained model (0 skips the stage; default: %(default)s)",
    )
    demo.add_argument(
        "--one-shot-samples",
        type=_positive_int,
        default=16,
        help="completions of the one prompt per training step (paper: 64; default: %(default)s)",
    )
    demo.add_argument(
        "--one-shot-max-tokens",
        type=_positive_int,
        default=48,
        help="max completion tokens during training (paper: 2048; default: %(default)s)",
    )
    demo.add_argument(
        "--one-shot-eval-every",
        type=_positive_int,
        default=5,
        help="greedy accuracy on the items every N training steps (default: %(default)s)",
    )

    select = sub.add_parser(
        "select",
        help="rank prompts by pass@k variance (one-shot EM's prompt selection)",
        description="Sample k answers per candidate prompt, grade them, and print the prompts ranked by the "
        "variance p(1-p) of their pass rate (paper 2, sec. 2.2). Candidates: a JSONL file with 'prompt' "
        "(string or chat messages) and 'answer' fields, or generated arithmetic problems.",
    )
    select.add_argument("--model", default="default", help="'default' or a model id/folder")
    select.add_argument(
        "--data", default=None, help="JSONL file of {'prompt', 'answer'} (default: arithmetic)"
    )
    select.add_argument(
        "--candidates", type=_positive_int, default=24, help="arithmetic candidates (default: %(default)s)"
    )
    select.add_argument(
        "--k", type=_positive_int, default=8, help="samples per prompt (default: %(default)s)"
    )
    select.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    select.add_argument("--max-new-tokens", type=_positive_int, default=256, help="(default: %(default)s)")
    select.add_argument("--batch-size", type=_positive_int, default=64, help="(default: %(default)s)")
    select.add_argument("--top", type=_positive_int, default=10, help="rows to print (default: %(default)s)")
    select.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    select.add_argument("--output", default=None, help="also write all ranked rows to this JSONL file")
    select.add_argument("--no-progress", action="store_true", help="hide progress bars")

    from em_hf.eval.command import add_eval_parser

    add_eval_parser(sub)

    sub.add_parser(
        "build-ops",
        help="compile the C++ entropy kernels ahead of time (otherwise done on first use)",
        description="Compile em_hf's C++ entropy kernels with torch.utils.cpp_extension into torch's "
        "extension cache and report the backend em_hf.ops will use.",
    )
    return parser


def _build_ops() -> int:
    from em_hf.ops import _extension

    start = time.perf_counter()
    _extension.build(verbose=True)
    print(f"em_hf kernels ready in {time.perf_counter() - start:.1f} s; backend: {_extension.backend()}")
    return 0


def _run_demo(args: argparse.Namespace) -> None:
    import torch

    from em_hf.demo import format_table, run_demo
    from em_hf.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, load_in_8bit=args.load_in_8bit)
    print(f"Loaded {args.model} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    summaries = run_demo(
        model,
        tokenizer,
        methods=args.methods,
        n_items=args.items,
        seeds=range(args.seeds),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(format_table(summaries))
    print(
        f"\n{args.items} arithmetic problems (2 and 3 operands), graded by the last integer; "
        f"max {args.max_new_tokens} new tokens; {time.perf_counter() - start:.0f} s so far."
    )
    if args.one_shot_steps > 0:
        from em_hf.one_shot_demo import format_one_shot_report, run_one_shot_demo

        result = run_one_shot_demo(
            model,
            tokenizer,
            steps=args.one_shot_steps,
            samples_per_step=args.one_shot_samples,
            micro_batch=args.one_shot_samples,
            max_completion_length=args.one_shot_max_tokens,
            eval_items=args.items,
            eval_methods=["greedy", "sample:t=0.5", "sample"],
            seeds=range(args.seeds),
            eval_every=args.one_shot_eval_every,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        print("\n" + format_one_shot_report(result))
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")


def _read_candidates(path: str) -> tuple[list, list]:
    import json

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


def _run_select(args: argparse.Namespace) -> None:
    import json

    from em_hf.data import make_arithmetic_problems, select_by_pass_variance
    from em_hf.models import load_model

    if args.data is not None:
        prompts, answers = _read_candidates(args.data)
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
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print("| rank | prompt | answer | pass rate | variance |")
    print("|---|---|---|---|---|")
    for rank, row in enumerate(ranked[: args.top], start=1):
        text = row.prompt if isinstance(row.prompt, str) else row.prompt[-1]["content"]
        print(f"| {rank} | {text[:80]!r} | {row.answer} | {row.pass_rate:.3f} | {row.variance:.3f} |")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            for row in ranked:
                record = {"index": row.index, "prompt": row.prompt, "answer": row.answer}
                record.update(
                    pass_rate=row.pass_rate, variance=row.variance, completions=list(row.completions)
                )
                handle.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        _run_demo(args)
    elif args.command == "select":
        _run_select(args)
    elif args.command == "eval":
        from em_hf.eval.command import run_eval

        return run_eval(args)
    elif args.command == "build-ops":
        return _build_ops()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
