"""One-shot entropy minimization on the embedded SmolLM2-135M-Instruct, measured on arithmetic.

    python examples/one_shot_em_arithmetic.py                  # the README's figures (~15 min on 2 CPU cores)
    python examples/one_shot_em_arithmetic.py --steps 3 --items 20 --seeds 1   # a quick look

What it does (em_hf.demos.one_shot): rank arithmetic prompts that are not in the evaluation set by pass@k
variance, train 10 steps of one-shot EM (EntropyMinConfig.one_shot with fewer samples per step and
shorter completions than the paper, for CPU time), and score the model before, during (greedy, every
step) and after on the package's arithmetic set with greedy decoding and sampling at T=0.5 and T=1.0.

The core of it, for your own model and prompt:

    from em_hf import EntropyMinConfig, EntropyMinTrainer
    args = EntropyMinConfig.one_shot(
        output_dir="out", per_device_train_batch_size=8, gradient_accumulation_steps=8
    )
    trainer = EntropyMinTrainer(model=model, args=args, train_dataset=[prompt], processing_class=tok)
    trainer.train()
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from em_hf.demos.one_shot import format_one_shot_report, run_one_shot_demo
from em_hf.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16, help="completions per step (paper: 64)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-completion-length", type=int, default=48, help="(paper: 2048)")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="(paper: 2e-5)")
    parser.add_argument("--out", default="runs/one_shot_em")
    args = parser.parse_args()

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    result = run_one_shot_demo(
        model,
        tokenizer,
        steps=args.steps,
        samples_per_step=args.samples,
        micro_batch=args.micro_batch,
        max_completion_length=args.max_completion_length,
        num_candidates=args.candidates,
        k=args.k,
        eval_items=args.items,
        seeds=range(args.seeds),
        eval_every=args.eval_every,
        learning_rate=args.learning_rate,
    )
    report = format_one_shot_report(result)
    print(report)
    print(f"\nTotal wall time {time.perf_counter() - start:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report + "\n")
    record = {
        "settings": result.settings,
        "selected": {"prompt": result.selected.prompt, "answer": result.selected.answer},
        "candidates": [
            {"prompt": c.prompt[-1]["content"], "pass_rate": c.pass_rate, "variance": c.variance}
            for c in result.candidates
        ],
        "before": [asdict(s) for s in result.before],
        "after": [asdict(s) for s in result.after],
        "during": [asdict(r) for r in result.during],
        "train_log": result.train_log,
        "train_seconds": result.train_seconds,
        "peak_rss_mib": result.peak_rss_mib,
    }
    (out / "result.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
