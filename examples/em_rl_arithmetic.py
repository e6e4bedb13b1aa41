"""EM-RL on unlabeled arithmetic prompts with the embedded SmolLM2-135M-Instruct, against the base model
and the SC-RL (self-consistency reward) baseline (paper 1, sections 3.2-3.3, in miniature).

    python examples/em_rl_arithmetic.py   # base, em-token, em-sequence, sc: minutes per run on CPU
    python examples/em_rl_arithmetic.py --runs em-token --steps 4 --eval-items 20   # a quick look

Each run starts from the base model and trains with EMRLOOTrainer on prompts only (the answers of
the training problems are dropped): ``em-token`` and ``em-sequence`` use the EM reward alone,
``sc`` uses em_hf.rewards.self_consistency_reward (with the token EM reward logged at weight 0).
The trained model is then evaluated like `em-hf demo` on the package's arithmetic set (a different
seed from the training prompts): sampling at T=1 with several seeds, and greedy decoding.

The paper trains a 7B model with lr 1e-6 over batches of 512 for up to ~100 steps. This run is tiny
(a few steps of 4 prompts x 4 completions on CPU), so its default learning rate is larger (2e-5);
``--lr 1e-6`` gives the paper's value, which moves this model very little in so few steps.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time

from em_hf import EMRLOOConfig, EMRLOOTrainer, load_default_model
from em_hf.data.arithmetic import arithmetic_dataset
from em_hf.demos.decoding import run_demo
from em_hf.rewards import self_consistency_reward

RUNS = {
    # name: (em_reward, em_reward_weight, user reward functions)
    "em-token": ("token", 1.0, []),
    "em-sequence": ("sequence", 1.0, []),
    "sc": ("token", 0.0, [self_consistency_reward]),
}


def train(run: str, args: argparse.Namespace, seed: int):
    """One EM-RL / SC-RL run from the base model; returns (model, tokenizer, training statistics)."""
    em_reward, em_weight, reward_funcs = RUNS[run]
    model, tokenizer = load_default_model()
    prompts = arithmetic_dataset(args.train_prompts, seed=args.train_data_seed).select_columns(["prompt"])
    with tempfile.TemporaryDirectory() as output_dir:
        config = EMRLOOConfig.paper(
            em_reward=em_reward,
            em_reward_weight=em_weight,
            output_dir=output_dir,
            learning_rate=args.lr,  # the paper's 1e-6 is for ~100 steps of 512; see the module docstring
            max_steps=args.steps,
            per_device_train_batch_size=args.prompts_per_step * 4,  # 4 generations per prompt (paper)
            max_completion_length=args.max_completion_length,
            temperature=1.0,
            seed=seed,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = EMRLOOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=prompts,
            processing_class=tokenizer,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    stats = {
        "train_s": seconds,
        "step_s": statistics.fmean(h["step_time"] for h in logs),
        "first_entropy": logs[0]["entropy"],
        "last_entropy": logs[-1]["entropy"],
    }
    model = trainer.model.eval()
    del trainer
    gc.collect()
    return model, tokenizer, stats


def evaluate(model, tokenizer, args: argparse.Namespace) -> dict[str, object]:
    sample, greedy = run_demo(
        model,
        tokenizer,
        methods=["sample", "greedy"],
        n_items=args.eval_items,
        seeds=tuple(range(args.eval_seeds)),
        max_new_tokens=32,
        progress=False,
    )
    return {"sample": sample, "greedy": greedy}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=["base", *RUNS], choices=["base", *RUNS])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--train-prompts", type=int, default=64)
    parser.add_argument("--train-data-seed", type=int, default=1)
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-items", type=int, default=60)
    parser.add_argument("--eval-seeds", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for run in args.runs:
        for seed in [None] if run == "base" else args.train_seeds:
            start = time.perf_counter()
            if run == "base":
                model, tokenizer = load_default_model()
                stats = None
            else:
                model, tokenizer, stats = train(run, args, seed)
            result = evaluate(model, tokenizer, args)
            rows.append((run, seed, stats, result, time.perf_counter() - start))
            sample, greedy = result["sample"], result["greedy"]
            print(
                f"[{run} seed={seed}] sample {100 * sample.accuracy:.1f}% ± {100 * sample.accuracy_std:.1f}, "
                f"greedy {100 * greedy.accuracy:.1f}%, entropy {sample.mean_entropy:.3f}, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
            del model
            gc.collect()

    print(
        f"\n{args.steps} steps x {args.prompts_per_step} prompts x 4 completions, lr {args.lr:g}, "
        "beta 0.001, "
        f"max_completion_length {args.max_completion_length}; eval: {args.eval_items} arithmetic items, "
        f"sampling T=1 over {args.eval_seeds} seeds, greedy once.\n"
    )
    print(
        "| run | train seed | sample accuracy (mean ± sd) | greedy accuracy "
        "| mean token entropy, sampled (nats) | tokens / answer | train entropy first -> last step "
        "| s / step | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run, seed, stats, result, _ in rows:
        sample, greedy = result["sample"], result["greedy"]
        train_cols = (
            "- | - | -"
            if stats is None
            else f"{stats['first_entropy']:.3f} -> {stats['last_entropy']:.3f} | {stats['step_s']:.1f} "
            f"| {stats['train_s']:.0f}"
        )
        print(
            f"| {run} | {'-' if seed is None else seed} | {100 * sample.accuracy:.1f}% ± "
            f"{100 * sample.accuracy_std:.1f} | {100 * greedy.accuracy:.1f}% | {sample.mean_entropy:.3f} "
            f"| {sample.tokens:.1f} | {train_cols} |"
        )


if __name__ == "__main__":
    main()
