"""``em-hf demo``: decoding methods compared on arithmetic, then (optionally) one-shot EM and the
same comparison on the trained model."""

from __future__ import annotations

import argparse
import sys
import time

from em_hf.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``add_subparsers`` object."""
    from em_hf.demos.decoding import DEFAULT_DEMO_METHODS

    parser = sub.add_parser(
        "demo",
        help="compare decoding methods (sampling, greedy, adaptive temperature, EM-INF) on arithmetic",
        description="Load a model (default: the embedded SmolLM2-135M-Instruct) and compare decoding methods "
        "on the package's arithmetic benchmark; prints a markdown table.",
    )
    options.add_model_options(parser)
    parser.add_argument(
        "--methods",
        type=options.decoding_method,
        nargs="+",
        default=list(DEFAULT_DEMO_METHODS),
        help="decoding methods, each NAME[:key=value,...] with NAME in greedy, sample, adaptive, em-inf; "
        "t= is the sampling temperature, other keys go to the method's processor, e.g. "
        "--methods sample em-inf:t=0.1,n_steps=5 (default: %(default)s)",
    )
    parser.add_argument(
        "--items", type=options.positive_int, default=60, help="arithmetic problems (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds",
        type=options.positive_int,
        default=3,
        help="seeds per sampled method (default: %(default)s)",
    )
    options.add_generation_options(parser, max_new_tokens=32, batch_size=64)
    one_shot = parser.add_argument_group("one-shot EM stage")
    one_shot.add_argument(
        "--one-shot-steps",
        type=options.non_negative_int,
        default=10,
        help="one-shot EM steps on the prompt chosen by pass@k variance, then the methods again on the "
        "trained model (0 skips the stage; default: %(default)s)",
    )
    for flag, default, text in (
        ("--one-shot-samples", 16, "completions of the one prompt per training step (paper: 64)"),
        ("--one-shot-max-tokens", 48, "max completion tokens during training (paper: 2048)"),
        ("--one-shot-eval-every", 5, "greedy accuracy on the items every N training steps"),
    ):
        one_shot.add_argument(
            flag, type=options.positive_int, default=default, help=f"{text} (default: %(default)s)"
        )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``em-hf demo`` from parsed arguments; prints the tables."""
    import torch

    from em_hf.demos.decoding import run_demo
    from em_hf.eval.report import format_seed_table
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
        **options.generation_kwargs(args),
    )
    print(format_seed_table(summaries))
    print(
        f"\n{args.items} arithmetic problems (2 and 3 operands), graded by the last integer; "
        f"max {args.max_new_tokens} new tokens; {time.perf_counter() - start:.0f} s so far."
    )
    if args.one_shot_steps > 0:
        from em_hf.demos.one_shot import format_one_shot_report, run_one_shot_demo

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
            **options.generation_kwargs(args),
        )
        print("\n" + format_one_shot_report(result))
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    return 0
