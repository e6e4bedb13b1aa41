"""EM-INF overhead inside vLLM: generated tokens/s with and without EM-INF, same prompts, same engine.

One vLLM engine serves the default model (SmolLM2-135M-Instruct from em_hf's safetensors cache) with
the em_hf processors loaded; batches of 1 and 32 arithmetic prompts (chat template) generate
``--max-tokens`` tokens each (``ignore_eos``, so every run generates the same number of tokens) at
temperature 0.1, plainly and with ``extra_args={"em_inf": {"n_steps": 3, ...}}`` at the default
threshold 0.3 and at threshold 0 (every row takes all 3 steps: the worst case). Each case is timed
``--repeats`` times after a warm-up; the best wall time counts. Prints tokens/s and the ratio
EM-INF / plain. Run on the machine you care about::

    VLLM_CPU_KVCACHE_SPACE=1 python examples/benchmarks/bench_vllm_em_inf.py

vLLM's CPU build needs the script under ``if __name__ == "__main__":`` (it spawns processes).
"""

from __future__ import annotations

import argparse
import os
import time

from _harness import format_table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-steps", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    from em_hf.data.arithmetic import make_arithmetic_problems
    from em_hf.generation.prompts import render_prompt
    from em_hf.generation.vllm import EntropyMinVLLMProcessor
    from em_hf.models import ensure_default_model_cache

    path = ensure_default_model_cache()
    tokenizer = AutoTokenizer.from_pretrained(path)
    started = time.perf_counter()
    llm = LLM(
        model=str(path),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        logits_processors=[EntropyMinVLLMProcessor],
    )
    print(f"engine start-up: {time.perf_counter() - started:.1f} s; torch threads {torch.get_num_threads()}")
    problems = make_arithmetic_problems(max(args.batches), seed=0)
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tokenizer, p.messages)) for p in problems]
    variants = {
        "plain": None,
        "EM-INF (threshold 0.3)": {"n_steps": args.n_steps},
        "EM-INF (threshold 0)": {"n_steps": args.n_steps, "threshold": 0.0},
    }

    def run(batch: int, settings) -> tuple[float, int]:
        extra = None if settings is None else {"em_inf": settings}
        params = SamplingParams(
            temperature=0.1, max_tokens=args.max_tokens, ignore_eos=True, extra_args=extra
        )
        begin = time.perf_counter()
        outputs = llm.generate(prompts[:batch], params, use_tqdm=False)
        seconds = time.perf_counter() - begin
        return seconds, sum(len(o.outputs[0].token_ids) for o in outputs)

    rows = []
    for batch in args.batches:
        plain_rate = None
        for name, settings in variants.items():
            run(batch, settings)  # warm-up (and the kernels' first use)
            best, tokens = min(run(batch, settings) for _ in range(args.repeats))
            rate = tokens / best
            plain_rate = rate if settings is None else plain_rate
            ratio = "1.00" if settings is None else f"{rate / plain_rate:.2f}"
            rows.append([batch, name, tokens, f"{best:.2f}", f"{rate:.1f}", ratio])
            print(f"batch {batch:>3}  {name:<24} {rate:8.1f} tokens/s", flush=True)
    print()
    print(format_table(["batch", "decoding", "tokens", "best s", "tokens/s", "vs plain"], rows))


if __name__ == "__main__":
    main()
