"""The ``em-hf`` command line. Subcommands: ``demo``, ``build-ops``."""

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


def _method(text: str) -> str:
    from em_hf.eval.decoding import parse_method

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
        f"max {args.max_new_tokens} new tokens; total {time.perf_counter() - start:.0f} s."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        _run_demo(args)
    elif args.command == "build-ops":
        return _build_ops()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
