"""``em-hf preflight``: will entropy minimization help this model on this benchmark? Greedy and sampled
accuracy, pass@k and its variance, and how well each label-free confidence signal ranks right answers
above wrong ones (AUROC), with 95% intervals and a verdict per signal (:mod:`em_hf.eval.preflight`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from em_hf.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``preflight`` on an ``add_subparsers`` object."""
    parser = sub.add_parser(
        "preflight",
        help="will EM help this model? confidence vs correctness on a labeled sample",
        description="On a labeled sample of a benchmark: greedy and sampled accuracy, pass@k, the pass-rate "
        "variance, and the AUROC against correctness of minus mean entropy, self-certainty, sequence "
        "log-probability and vote share, each with a 95%% interval (Wilson for greedy accuracy, a bootstrap "
        "over items for the rest) and a verdict. Writes preflight.json and preflight.png to --out.",
    )
    options.add_model_options(parser)
    parser.add_argument(
        "--benchmark", default="arithmetic:n=100", help="benchmark spec (default: %(default)s)"
    )
    parser.add_argument(
        "--items", type=options.positive_int, default=100, help="items sampled (default: %(default)s)"
    )
    parser.add_argument(
        "--k", type=options.positive_int, default=8, help="samples per item (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature", type=options.positive_float, default=1.0, help="sampling T (default: %(default)s)"
    )
    options.add_generation_options(parser, max_new_tokens=256, batch_size=16)
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling and bootstrap seed (default: %(default)s)"
    )
    parser.add_argument(
        "--bootstrap",
        type=options.positive_int,
        default=1000,
        help="bootstrap resamples (default: %(default)s)",
    )
    parser.add_argument("--out", default="runs/preflight", help="output folder (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``em-hf preflight`` from parsed arguments; prints the report and writes JSON and a plot."""
    import torch

    from em_hf.eval.preflight import format_preflight, plot_reliability, run_preflight
    from em_hf.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, load_in_8bit=args.load_in_8bit)
    generation = options.generation_kwargs(args)
    report = run_preflight(
        model,
        tokenizer,
        args.benchmark,
        num_items=args.items,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        resamples=args.bootstrap,
        **generation,
    )
    report.settings["model"] = args.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(format_preflight(report))
    for line in report.verdicts.values():
        print(f"- {line}")
    json_path = report.to_json(out / "preflight.json")
    plot_path = plot_reliability(report, out / "preflight.png")
    print(f"\nWrote {json_path} and {plot_path}.")
    return 0
