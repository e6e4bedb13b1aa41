"""Benchmark of EM-INF: ``em_hf.EntropyMinLogitsProcessor`` vs the reference procedure (issue 3).

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_em_inf.py                # full size (several minutes)
    python examples/benchmarks/bench_em_inf.py --quick        # small rows, 4 new tokens: does it run?
    python examples/benchmarks/bench_em_inf.py --thp off --json runs/bench_em_inf.json

Two tables, both through the public processor API only (``em_hf.EntropyMinLogitsProcessor``):

1. The processor alone vs the reference procedure written below (SPEC.md: torch.optim.Adam on the
   autograd gradient of H + kl_weight * KL, one row at a time, stopping when H < threshold) on random
   rows of [8, 151936] and [1, 49152] whose entropy never reaches the threshold (so every step runs),
   n_steps 3 and 10: median ms per call after a warm-up, the speed-up, the largest difference of the
   two outputs and the lowest entropy after.
2. The overhead on ``generate`` of the default model (``em_hf.load_default_model``; sampled, T=0.1,
   exactly 32 new tokens, batch 1 and 8): median seconds per call of plain generate, ours and the
   reference as a LogitsProcessor (for context), variants interleaved within each repeat.

Each table runs in a fresh subprocess with THP off (``THP_MEM_ALLOC_ENABLE`` unset, the default) and
on (see ``_harness.py``); ``--quick`` shrinks rows, tokens and repeats and runs THP off only. The
first load of the default model takes ~30 s. Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import _harness as harness
import torch

STEPS = [3, 10]  # n_steps of every table
CHAT_PROMPTS = (
    "Compute 17 + 8. Reply with just the number.",
    "What is 13 - 5 + 9? Answer briefly.",
    "Name a prime number larger than 20.",
    "Compute 6 * 7. Reply with just the number.",
    "What is half of 64?",
    "Compute 100 - 37. Reply with just the number.",
    "Is 91 a prime number? Explain in one sentence.",
    "Compute 12 + 30 - 4. Reply with just the number.",
)

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# The reference procedure and ours
# ----------------------------------------------------------------------------------------------------------


def reference_em_inf_row(
    logits: torch.Tensor, threshold: float = 0.3, n_steps: int = 3, lr: float = 0.1, kl_weight: float = 0.001
) -> torch.Tensor:
    """The reference procedure (SPEC.md) for ONE row: torch.optim.Adam on the autograd gradient of
    H + kl_weight * F.kl_div(p.log(), p_orig, reduction="batchmean"), stopping when H < threshold."""
    z = logits.detach().clone().reshape(1, -1).requires_grad_(True)
    p_orig = torch.softmax(z.detach(), dim=-1)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(n_steps):
        p = torch.softmax(z, dim=-1)
        entropy = -(p * p.log()).sum()
        if entropy < threshold:
            break
        loss = entropy + kl_weight * torch.nn.functional.kl_div(p.log(), p_orig, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return z.detach().reshape(-1)


def make_reference_processor(n_steps: int) -> Processor:
    """The reference procedure as a LogitsProcessor: one row at a time (it is batch-1 only), on the
    row's finite entries (it has no -inf handling; ``min_new_tokens`` masks EOS with -inf)."""
    from transformers import LogitsProcessor

    class ReferenceEmInfProcessor(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = scores.clone()
            with torch.enable_grad():  # generate runs under no_grad
                for row, row_scores in enumerate(scores):
                    finite = torch.isfinite(row_scores)
                    out[row, finite] = reference_em_inf_row(row_scores[finite], n_steps=n_steps)
            return out

    return ReferenceEmInfProcessor()


def make_ours_processor(n_steps: int) -> Processor:
    from em_hf import EntropyMinLogitsProcessor

    return EntropyMinLogitsProcessor(n_steps=n_steps)


def row_entropy(scores: torch.Tensor) -> torch.Tensor:
    """H of each row of ``scores`` (float64, for the "min H after" column)."""
    log_p = torch.log_softmax(scores.double(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


# ----------------------------------------------------------------------------------------------------------
# Workers: the processor alone, and generate
# ----------------------------------------------------------------------------------------------------------


def time_processor(processor: Processor, scores: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds per ``processor(input_ids, scores)`` call (after a warm-up) and its output."""
    input_ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    times, out = harness.time_calls(lambda: processor(input_ids, scores), repeats)
    return statistics.median(times), out


def eminf_op_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time per call of ours and of the reference on random rows whose entropy stays above 0.3."""
    results = []
    for batch, vocab in spec["shapes"]:
        scores = harness.make_logits(batch, vocab, torch.float32, seed=1, std=2.0)  # H ~ log(vocab) - 2
        for n_steps in spec["steps"]:
            ours_s, ours_out = time_processor(make_ours_processor(n_steps), scores, spec["repeats"])
            ref_s, ref_out = time_processor(make_reference_processor(n_steps), scores, spec["repeats"])
            results.append(
                {
                    "batch": batch,
                    "vocab": vocab,
                    "n_steps": n_steps,
                    "ours_s": ours_s,
                    "reference_s": ref_s,
                    "max_abs_diff": (ours_out - ref_out).abs().max().item(),
                    "min_entropy_after": row_entropy(ours_out).min().item(),
                }
            )
    return {"rows": results}


def chat_inputs(tokenizer: Any, batch: int) -> dict[str, torch.Tensor]:
    prompts = [CHAT_PROMPTS[i % len(CHAT_PROMPTS)] for i in range(batch)]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def generate_seconds(
    model: Any, inputs: dict, processors: list, new_tokens: int, pad_id: int
) -> tuple[float, int]:
    """Wall time of one sampled generate call (T=0.1, exactly ``new_tokens`` steps) and the steps made."""
    torch.manual_seed(0)
    start = time.perf_counter()
    output = model.generate(
        **inputs,
        do_sample=True,
        temperature=0.1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        logits_processor=processors,
        pad_token_id=pad_id,
    )
    return time.perf_counter() - start, output.shape[1] - inputs["input_ids"].shape[1]


def generate_variants(steps: Sequence[int]) -> dict[str, Callable[[], list]]:
    variants: dict[str, Callable[[], list]] = {"plain": list}
    for n in steps:
        variants[f"ours n_steps={n}"] = lambda n=n: [make_ours_processor(n)]
    for n in steps:
        variants[f"reference n_steps={n}"] = lambda n=n: [make_reference_processor(n)]
    return variants


def eminf_generate_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Median generate time per variant and batch; variants interleaved within each repeat."""
    from em_hf import load_default_model

    model, tokenizer = load_default_model()
    variants = generate_variants(spec["steps"])
    results = []
    for batch in spec["batches"]:
        inputs = chat_inputs(tokenizer, batch)
        times: dict[str, list[float]] = {name: [] for name in variants}
        steps_made: dict[str, int] = {}
        for repeat in range(spec["repeats"] + 1):  # repeat 0 is the warm-up
            for name, make in variants.items():
                seconds, steps_made[name] = generate_seconds(
                    model, inputs, make(), spec["new_tokens"], tokenizer.pad_token_id
                )
                if repeat:
                    times[name].append(seconds)
        for name in variants:
            results.append(
                {
                    "batch": batch,
                    "variant": name,
                    "seconds": statistics.median(times[name]),
                    "steps": steps_made[name],
                }
            )
    return {"rows": results, "model": type(model).__name__}


# ----------------------------------------------------------------------------------------------------------
# The section: two tables
# ----------------------------------------------------------------------------------------------------------


def op_row(thp: str, row: dict[str, Any]) -> list[str]:
    return [
        f"[{row['batch']}, {row['vocab']}]",
        harness.THP_LABEL[thp],
        str(row["n_steps"]),
        harness.fmt(1e3 * row["ours_s"], ".2f"),
        harness.fmt(1e3 * row["reference_s"], ".2f"),
        harness.ratio_text(row["reference_s"], row["ours_s"]),
        harness.fmt(row["max_abs_diff"], ".1e"),
        harness.fmt(row["min_entropy_after"], ".2f"),
    ]


def run_op(run: harness.Run) -> list[dict[str, Any]]:
    repeats = run.size(3, 15)
    print(
        f"== EM-INF processor alone vs the reference (Adam on autograd, row by row); median of "
        f"{repeats} calls after a warm-up;\n"
        "   random rows whose entropy stays above the threshold, so every step runs",
        flush=True,
    )
    shapes = run.size([(8, 8192), (1, 4096)], [(8, 151936), (1, 49152)])
    spec = {"shapes": shapes, "steps": STEPS, "repeats": repeats}
    table, collected = [], []
    for thp, result in run.spawn_each_thp(eminf_op_worker, spec).items():
        for row in result["rows"] if result else []:
            collected.append({"thp": thp, **row})
            table.append(op_row(thp, row))
    headers = ["scores", "THP", "n_steps", "ours ms", "reference ms", "speed-up of ours", "max|ours-ref|"]
    harness.print_table([*headers, "min H after"], table)
    return collected


def run_generate(run: harness.Run) -> list[dict[str, Any]]:
    n, repeats = run.size(4, 32), run.size(1, 5)
    print(
        f"== EM-INF in model.generate: default model, do_sample, T=0.1, max_new_tokens=min_new_tokens={n}; "
        f"median of {repeats} after a warm-up, variants interleaved",
        flush=True,
    )
    spec = {"batches": run.size([1, 2], [1, 8]), "steps": STEPS, "new_tokens": n, "repeats": repeats}
    table, collected = [], []
    for thp, result in run.spawn_each_thp(eminf_generate_worker, spec).items():
        rows = result["rows"] if result else []
        plain = {row["batch"]: row["seconds"] for row in rows if row["variant"] == "plain"}
        for row in rows:
            overhead = 100 * (row["seconds"] / plain[row["batch"]] - 1)
            collected.append({"thp": thp, **row, "overhead_pct": overhead})
            per_step = harness.fmt(1e3 * row["seconds"] / max(row["steps"], 1), ".1f")
            shown = "" if row["variant"] == "plain" else f"{overhead:+.1f}%"
            seconds = harness.fmt(row["seconds"], ".3f")
            cells = [row["variant"], harness.THP_LABEL[thp], row["batch"], seconds, per_step]
            table.append([*cells, row["steps"], shown])
    harness.print_table(["variant", "THP", "batch", "s/call", "ms/step", "steps", "overhead vs plain"], table)
    for case in collected:
        if case["variant"] == f"ours n_steps={STEPS[0]}":
            where = f"batch {case['batch']}, {harness.THP_INLINE[case['thp']]}"
            overhead = f"{case['overhead_pct']:+.1f}%"
            print(f"  {case['variant']} overhead on generate, {where}: {overhead} (target <= 3%)")
    print(flush=True)
    return collected


def run_section(run: harness.Run, args: argparse.Namespace) -> dict[str, Any]:
    """The two tables; EM-INF has no options of its own (``args`` unused)."""
    return {"op": run_op(run), "generate": run_generate(run)}


SECTION = harness.Section("eminf", run_section)

if __name__ == "__main__":
    harness.main([SECTION], __doc__)
