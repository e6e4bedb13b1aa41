"""Compare decoding methods on a benchmark from Python (what `em-hf eval` does, as a library).

    python examples/eval_methods.py                       # default model, 20 arithmetic items
    python examples/eval_methods.py --benchmark math500:level=1 --limit 10 --max-new-tokens 256

Prints the Table-3-shaped accuracy table and the detailed table (95% Wilson intervals, tokens,
seconds and FLOPs per item, AUROC of -entropy for correctness) and writes items.jsonl, table.md and
accuracy_vs_flops.png to --out (re-running resumes).
"""

from __future__ import annotations

import argparse

from em_hf.eval import load_benchmark
from em_hf.eval.report import format_details, format_table
from em_hf.eval.runner import evaluate
from em_hf.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--benchmark", default="arithmetic")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["greedy", "sample", "sc:4", "em-inf", "em-inf-sc:4"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="runs/example_eval")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    items = load_benchmark(args.benchmark, limit=args.limit)
    run = evaluate(
        model,
        tokenizer,
        {args.benchmark: items},
        args.methods,
        out_dir=args.out,
        seeds=[0],
        max_new_tokens=args.max_new_tokens,
    )
    print(format_table(run.summaries, run.not_applicable))
    print()
    print(format_details(run.summaries))


if __name__ == "__main__":
    main()
