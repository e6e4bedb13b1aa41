"""``em-hf preflight``: will entropy minimization help this model on this benchmark? Greedy and sampled
accuracy, pass@k and its variance, and how well each label-free confidence signal ranks right answers
above wrong ones (AUROC), with 95% intervals and a verdict per signal (:mod:`em_hf.eval.preflight`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from em_hf.cli import options

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "will EM help this model? confidence vs correctness on a labeled sample"
DESCRIPTION = (
    "On a labeled sample of a benchmark: greedy and sampled accuracy, pass@k, the pass-rate variance, and "
    "the AUROC against correctness of minus mean entropy, self-certainty, sequence log-probability and "
    "vote share, each with a 95% interval (Wilson for greedy accuracy, a bootstrap over items for the "
    "rest) and a verdict. Writes preflight.json and preflight.png to --out."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``em-hf preflight``."""
    options.add_model_options(parser)
    options.add_option(parser, "--benchmark", "arithmetic:n=100", "benchmark spec")
    options.add_option(parser, "--items", 100, "items sampled", type=options.positive_int)
    options.add_option(parser, "--k", 8, "samples per item", type=options.positive_int)
    options.add_option(parser, "--temperature", 1.0, "sampling T", type=options.positive_float)
    options.add_generation_options(parser, max_new_tokens=256, batch_size=16)
    options.add_option(parser, "--seed", 0, "sampling and bootstrap seed", type=int)
    options.add_option(parser, "--bootstrap", 1000, "bootstrap resamples", type=options.positive_int)
    options.add_option(parser, "--out", "runs/preflight", "output folder")


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
