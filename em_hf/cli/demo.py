"""``em-hf demo``: decoding methods compared on arithmetic, then (optionally) one-shot EM and the
same comparison on the trained model."""

from __future__ import annotations

import argparse
import sys
import time

from em_hf.cli import options

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "compare decoding methods (sampling, greedy, adaptive temperature, EM-INF) on arithmetic"
DESCRIPTION = (
    "Load a model (default: the embedded SmolLM2-135M-Instruct) and compare decoding methods on the "
    "package's arithmetic benchmark; prints a markdown table."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``em-hf demo``."""
    from em_hf.demos.decoding import DEFAULT_DEMO_METHODS

    options.add_model_options(parser)
    options.add_option(
        parser,
        "--methods",
        list(DEFAULT_DEMO_METHODS),
        "decoding methods, each NAME[:key=value,...] with NAME in greedy, sample, adaptive, em-inf; "
        "t= is the sampling temperature, other keys go to the method's processor, e.g. "
        "--methods sample em-inf:t=0.1,n_steps=5",
        type=options.decoding_method,
        nargs="+",
    )
    options.add_option(parser, "--items", 60, "arithmetic problems", type=options.positive_int)
    options.add_option(parser, "--seeds", 3, "seeds per sampled method", type=options.positive_int)
    options.add_generation_options(parser, max_new_tokens=32, batch_size=64)
    one_shot = parser.add_argument_group("one-shot EM stage")
    options.add_option(
        one_shot,
        "--one-shot-steps",
        10,
        "one-shot EM steps on the prompt chosen by pass@k variance, then the methods again on the "
        "trained model (0 skips the stage)",
        type=options.non_negative_int,
    )
    for flag, default, text in (
        ("--one-shot-samples", 16, "completions of the one prompt per training step (paper: 64)"),
        ("--one-shot-max-tokens", 48, "max completion tokens during training (paper: 2048)"),
        ("--one-shot-eval-every", 5, "greedy accuracy on the items every N training steps"),
    ):
        options.add_option(one_shot, flag, default, text, type=options.positive_int)


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
