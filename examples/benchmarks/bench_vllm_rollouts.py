"""One-shot EM step with HF ``generate`` rollouts vs vLLM rollouts (issue 11, part 4): default model,
``EntropyMinConfig.one_shot()`` (64 completions of one prompt per step, T=0.5, top_p 0.95) with a short
``max_completion_length`` for CPU time, ``use_cpu=True``. Each backend runs in a fresh interpreter
(``--worker hf|vllm``) and reports the time of the generation part (``generate_batch``: rollouts and,
with vLLM, the weight sync) and of the whole micro-step (``training_step``: rollouts, forward, backward),
and the vLLM engine's start-up, which is paid once per run. Prints the ratios; never asserts a timing.

    VLLM_CPU_KVCACHE_SPACE=1 python examples/benchmarks/bench_vllm_rollouts.py --max-completion-length 48
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT = [{"role": "user", "content": "Compute 12 - 11 + 10. Reply with just the number."}]
RESULT = "BENCH_RESULT "


def worker(backend: str, max_completion_length: int, steps: int) -> dict:
    from em_hf.models import ensure_default_model_cache, load_model
    from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer

    model, tokenizer = load_model(ensure_default_model_cache())
    extra = {}
    if backend == "vllm":
        extra = {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_max_model_length": 512,
            "vllm_engine_kwargs": {"dtype": "float32", "enforce_eager": True},
        }
    args = EntropyMinConfig.one_shot(
        output_dir=tempfile.mkdtemp(),
        max_completion_length=max_completion_length,
        max_steps=steps,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        collapse_guard=False,  # a speed benchmark: every step runs, whatever the entropy does
        **extra,
    )
    start = time.perf_counter()
    trainer = EntropyMinTrainer(model=model, args=args, train_dataset=[PROMPT], processing_class=tokenizer)
    startup = time.perf_counter() - start
    generation: list[float] = []
    original = trainer.generate_batch

    def timed_generate_batch(prompts):
        begin = time.perf_counter()
        batch = original(prompts)
        generation.append(time.perf_counter() - begin)
        return batch

    trainer.generate_batch = timed_generate_batch
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    return {
        "backend": backend,
        "startup_s": startup,
        "generation_s": generation,
        "step_s": [entry["step_time"] for entry in logs],
        "mean_length": [entry["completions/mean_length"] for entry in logs],
        "threads": __import__("torch").get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument(
        "--steps", type=int, default=1, help="optimizer steps per backend (64 completions each)"
    )
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        result = worker(options.worker, options.max_completion_length, options.steps)
        print(RESULT + json.dumps(result), flush=True)
        return
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    results = {}
    for backend in options.backends.split(","):
        command = [sys.executable, __file__, "--worker", backend]
        command += [
            "--max-completion-length",
            str(options.max_completion_length),
            "--steps",
            str(options.steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
        if done.returncode != 0 or not lines:
            sys.exit(f"the {backend} worker failed:\n{done.stderr[-3000:]}")
        results[backend] = json.loads(lines[-1].removeprefix(RESULT))
    print(f"one-shot EM step: 64 completions x <= {options.max_completion_length} tokens, default model, CPU")
    print("| rollouts | engine start-up (s) | generation per step (s) | whole step (s) | mean tokens |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        gens = ", ".join(f"{t:.1f}" for t in r["generation_s"])
        steps = ", ".join(f"{t:.1f}" for t in r["step_s"])
        lengths = ", ".join(f"{n:.1f}" for n in r["mean_length"])
        print(f"| {name} | {r['startup_s']:.1f} | {gens} | {steps} | {lengths} |")
    if {"hf", "vllm"} <= results.keys():
        hf, vl = results["hf"], results["vllm"]
        print(f"generation: HF / vLLM = {sum(hf['generation_s']) / sum(vl['generation_s']):.2f}x")
        print(f"whole step: HF / vLLM = {sum(hf['step_s']) / sum(vl['step_s']):.2f}x")


if __name__ == "__main__":
    main()
