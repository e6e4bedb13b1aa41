"""Benchmark of the entropy ops: token entropy, LM-head entropy and EM-INF (issue 3, "Benchmark").

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_entropy.py                   # everything, full size (long)
    python examples/benchmarks/bench_entropy.py --quick           # small shapes: does it run? (~1-2 min)
    python examples/benchmarks/bench_entropy.py --sections token  # one or more of token,lmhead,eminf
    python examples/benchmarks/bench_entropy.py --sections token --dtypes float32 --thp off \\
        --shapes 4096x49152 --variants naive,ours                # a subset
    python examples/benchmarks/bench_entropy.py --threads 2 --json runs/bench.json

Every measured case runs in a FRESH subprocess (this script with ``--worker SPEC``), which prints
one JSON line back; the parent prints the tables. Each case runs with ``THP_MEM_ALLOC_ENABLE``
unset (THP "off": what a user gets by default) and set to 1 (THP "on": torch's CPU allocator asks
for transparent huge pages, which makes fresh large tensors much cheaper to fault in). Workers use
one thread unless ``--threads`` says otherwise. Nothing here asserts a timing. ``--quick`` shrinks
shapes and repeats, runs THP off only (unless ``--thp`` is given) and measures all token cases of
a variant in one process.

Sections
  token   entropy of [rows, vocab] logits, forward and forward+backward (``autograd.grad`` of
          H.sum()), variants: naive ``-(softmax * log_softmax).sum(-1)``, the logsumexp form
          ``lse - (softmax * z).sum(-1)``, ``torch.compile`` of the logsumexp form, trl's chunked
          ``entropy_from_logits`` and ours (``em_hf.ops.token_entropy``). Baselines compute in the
          input dtype, as written; ours accumulates in float32. Time = best of the repeats after one
          warm-up call on logits created (and so touched) once per process. Memory: the process's
          max RSS, and the extra peak during the timed calls over the RSS just before them. GB/s
          counts the minimal traffic (forward: the logits read once; forward+backward: read twice,
          the gradient written once); exps count one per logit per pass (1 forward, 2 fwd+bwd).
          Roofline: read and write bandwidth and exp throughput measured in a child process
          (pre-touched buffers); "% roof" = the roofline's lower bound on the time / the time.
          The errors are against float64 on the first rows.
  lmhead  entropy from hidden states and the LM-head weight, forward+backward (gradients of hidden
          and weight): ``em_hf.ops.linear_entropy.linear_token_entropy`` vs naive
          ``token_entropy(hidden @ W.T)`` vs trl's ``ChunkedLogProbFunction`` (CPU torch path).
  eminf   ``EntropyMinLogitsProcessor`` alone vs the reference procedure (torch.optim.Adam on the
          autograd gradient, row by row; written below), on rows that never reach the threshold
          (every step runs); then the overhead on the default model's ``generate`` (median of the
          repeats, variants interleaved), with the reference as a LogitsProcessor for context.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULT_PREFIX = "BENCH_RESULT "
THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_SETTINGS = {"off": None, "on": "1"}  # off = unset: the default a user gets
THP_LABEL = {"off": "off (default)", "on": "on"}  # in tables
THP_INLINE = {"off": "THP off = default", "on": "THP on"}  # in sentences
SECTIONS = ("token", "lmhead", "eminf")
TOKEN_VARIANTS = ("naive", "logsumexp", "compile", "trl", "ours")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
ERROR_ROWS = 64  # rows checked against a float64 reference after timing
TRL_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in trl 1.16
MIB = 2**20
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


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    """What to run; ``--quick`` shrinks every size and repeat count."""

    sections: list[str]
    threads: int
    thp: list[str]
    dtypes: list[str]
    variants: list[str]
    token_shapes: list[tuple[int, ...]]  # rows, vocab
    token_repeats: int
    roofline_read_mib: int
    roofline_exp_elements: int
    lmhead_shape: tuple[int, ...]  # rows, hidden, vocab
    lmhead_repeats: int
    lmhead_chunk_size: int | None
    trl_chunk_size: int
    eminf_shapes: list[tuple[int, int]]
    eminf_steps: list[int]
    eminf_repeats: int
    gen_batches: list[int]
    gen_new_tokens: int
    gen_repeats: int
    worker_timeout: float
    share_process: bool = False  # --quick: one process per variant for all token cases
    json_path: str | None = None
    quick: bool = False


def parse_shapes(text: str, dims: int) -> list[tuple[int, ...]]:
    """'4096x49152,2048x151936' -> [(4096, 49152), (2048, 151936)], each with ``dims`` sizes."""
    shapes = [tuple(int(size) for size in item.lower().split("x")) for item in text.split(",")]
    if any(len(shape) != dims for shape in shapes):
        raise SystemExit(f"expected shapes of {dims} sizes joined by 'x', got {text!r}")
    return shapes


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of token,lmhead,eminf")
    parser.add_argument("--quick", action="store_true", help="small shapes and repeats: checks that it runs")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in the workers")
    parser.add_argument(
        "--thp",
        default=None,
        help="THP_MEM_ALLOC_ENABLE: off (unset), on (=1); default off,on (--quick: off)",
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help="token section dtypes")
    parser.add_argument("--variants", default=",".join(TOKEN_VARIANTS), help="token section variants")
    parser.add_argument("--shapes", default=None, help="token section shapes, e.g. 4096x49152,2048x151936")
    parser.add_argument(
        "--lmhead-shape", default=None, help="lmhead rows x hidden x vocab, e.g. 8192x576x49152"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (token, lmhead)")
    parser.add_argument(
        "--lmhead-chunk-size", type=int, default=None, help="chunk_size for ours (default: its own)"
    )
    parser.add_argument("--trl-chunk-size", type=int, default=TRL_VOCAB_CHUNK, help="trl's vocabulary chunk")
    parser.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds per worker process")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def make_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    config = Config(
        sections=parse_list(args.sections, SECTIONS, "section"),
        threads=args.threads,
        thp=parse_list(args.thp or ("off" if quick else "off,on"), tuple(THP_SETTINGS), "THP setting"),
        dtypes=parse_list(args.dtypes, tuple(DTYPES), "dtype"),
        variants=parse_list(args.variants, TOKEN_VARIANTS, "variant"),
        token_shapes=[(256, 4096)] if quick else [(4096, 49152), (2048, 151936)],
        token_repeats=1 if quick else 3,
        roofline_read_mib=128 if quick else 1024,
        roofline_exp_elements=(8 if quick else 64) * 2**20,
        lmhead_shape=(512, 64, 4096) if quick else (8192, 576, 49152),
        lmhead_repeats=1 if quick else 2,
        lmhead_chunk_size=args.lmhead_chunk_size,
        trl_chunk_size=args.trl_chunk_size,
        eminf_shapes=[(8, 8192), (1, 4096)] if quick else [(8, 151936), (1, 49152)],
        eminf_steps=[3, 10],
        eminf_repeats=3 if quick else 15,
        gen_batches=[1, 2] if quick else [1, 8],
        gen_new_tokens=4 if quick else 32,
        gen_repeats=1 if quick else 5,
        worker_timeout=args.worker_timeout,
        share_process=quick,
        json_path=args.json,
        quick=quick,
    )
    if args.shapes:
        config.token_shapes = parse_shapes(args.shapes, 2)
    if args.lmhead_shape:
        (config.lmhead_shape,) = parse_shapes(args.lmhead_shape, 3)
    if args.repeats:
        config.token_repeats = config.lmhead_repeats = args.repeats
    return config


# ----------------------------------------------------------------------------------------------------------
# Measurement helpers (used in the workers)
# ----------------------------------------------------------------------------------------------------------


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def rss_mib() -> float:
    """Current resident set size of this process."""
    return _proc_status_mib("VmRSS")


def peak_rss_mib() -> float:
    """High-water mark of the RSS (since the start, or since the last :func:`reset_peak_rss`)."""
    return _proc_status_mib("VmHWM")


def max_rss_mib() -> float:
    """Max RSS of the whole process (getrusage; never reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def time_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones; also the last call's result."""
    for _ in range(warmup):
        call()
    times, result = [], None
    for _ in range(repeats):
        result = None  # the previous result is freed before the next call, not during it
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def measure_peak(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Time ``call`` (one warm-up) and measure the RSS peak of the timed calls over the RSS before them."""
    call()  # warm-up
    scoped = reset_peak_rss()  # first: the high-water mark restarts at the RSS read next
    baseline = rss_mib()
    times, result = time_calls(call, repeats, warmup=0)
    peak = peak_rss_mib()
    return {
        "times": times,
        "result": result,
        "baseline_mib": baseline,
        "extra_peak_mib": peak - baseline,
        "peak_scope": "timed calls" if scoped else "whole process",
        "max_rss_mib": max_rss_mib(),
    }


# ----------------------------------------------------------------------------------------------------------
# Token entropy variants
# ----------------------------------------------------------------------------------------------------------

EntropyFn = Callable[[torch.Tensor], torch.Tensor]


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(-1)


def logsumexp_entropy(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def load_token_variant(name: str) -> EntropyFn:
    """The entropy function of a variant; heavy imports (trl, inductor, the kernels) happen here."""
    if name == "naive":
        return naive_entropy
    if name == "logsumexp":
        return logsumexp_entropy
    if name == "compile":
        return torch.compile(logsumexp_entropy, dynamic=False, fullgraph=True)
    if name == "trl":
        from trl.trainer.utils import entropy_from_logits

        return entropy_from_logits
    if name == "ours":
        from em_hf.ops import token_entropy

        return token_entropy
    raise ValueError(f"unknown token variant {name!r}")


def make_logits(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0, std: float = 3.0) -> torch.Tensor:
    """Random logits, fully written here (so the timed calls never fault them in), a block of rows at a
    time (so a bfloat16 tensor never has a full float32 copy raising the process's max RSS)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.empty(rows, vocab, dtype=dtype)
    for block in logits.split(64):
        block.copy_(torch.randn(block.shape, generator=generator).mul_(std))
    return logits


def entropy_call(fn: EntropyFn, logits: torch.Tensor, backward: bool) -> Callable[[], tuple]:
    """A call returning (entropy, gradient of entropy.sum() or None)."""

    def forward_only() -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return fn(logits), None

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        entropy = fn(logits)
        (grad,) = torch.autograd.grad(entropy.sum(), logits)
        return entropy.detach(), grad

    return forward_backward if backward else forward_only


def reference_entropy_and_grad(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 H and dH/dz of a few rows (the check of each variant's output)."""
    z = logits.detach().double()
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)
    return entropy, -p * (log_p + entropy[:, None])


def measure_token_case(fn: EntropyFn, case: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Time, memory and error of ``fn`` on one (rows, vocab, dtype, mode) case."""
    backward = case["mode"] == "fwd+bwd"
    logits = make_logits(case["rows"], case["vocab"], DTYPES[case["dtype"]]).requires_grad_(backward)
    measured = measure_peak(entropy_call(fn, logits, backward), repeats)
    entropy, grad = measured.pop("result")  # of the last call
    ref_entropy, ref_grad = reference_entropy_and_grad(logits[:ERROR_ROWS])
    measured["entropy_error"] = (entropy[:ERROR_ROWS].double() - ref_entropy).abs().max().item()
    if grad is not None:
        grad = grad[:ERROR_ROWS].double()
    measured["grad_error"] = None if grad is None else (grad - ref_grad).abs().max().item()
    measured["logits_mib"] = logits.numel() * logits.element_size() / MIB
    return measured


def token_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant on a list of cases (one case per process, except with ``--quick``)."""
    fn = load_token_variant(spec["variant"])
    results = [measure_token_case(fn, case, spec["repeats"]) for case in spec["cases"]]
    if spec["variant"] == "ours":
        from em_hf.ops import backend

        for result in results:
            result["backend"] = backend()
    return {"cases": results}


# ----------------------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------------------


def memory_bandwidth(mib: int, repeats: int = 5) -> tuple[float, float]:
    """(read, write) GB/s: ``x.sum()`` and ``x.fill_()`` over a pre-touched float32 buffer of ``mib`` MiB."""
    buffer = torch.ones(mib * MIB // 4)
    read_times, _ = time_calls(buffer.sum, repeats)
    write_times, _ = time_calls(lambda: buffer.fill_(2.0), repeats)
    nbytes = buffer.numel() * buffer.element_size()
    return nbytes / min(read_times) / 1e9, nbytes / min(write_times) / 1e9


def exp_throughput(elements: int, repeats: int = 5) -> float:
    """float32 exps per second: ``torch.exp(x, out=y)`` into a preallocated (touched) output."""
    source = torch.rand(elements)
    out = torch.empty_like(source).zero_()
    times, _ = time_calls(lambda: torch.exp(source, out=out), repeats)
    return elements / min(times)


def roofline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    read_gbs, write_gbs = memory_bandwidth(spec["read_mib"])
    return {"read_gbs": read_gbs, "write_gbs": write_gbs, "exp_per_s": exp_throughput(spec["exp_elements"])}


# ----------------------------------------------------------------------------------------------------------
# LM-head entropy variants
# ----------------------------------------------------------------------------------------------------------

LmHeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def import_linear_token_entropy() -> Callable[..., torch.Tensor]:
    """``linear_token_entropy`` from em_hf (ImportError while it does not exist yet)."""
    try:
        from em_hf.ops.linear_entropy import linear_token_entropy
    except ImportError:
        from em_hf.ops import linear_token_entropy  # type: ignore[attr-defined]
    return linear_token_entropy


def load_lmhead_variant(name: str, chunk_size: int | None, trl_chunk_size: int) -> LmHeadFn:
    if name == "naive":
        from em_hf.ops import token_entropy

        return lambda hidden, weight: token_entropy(hidden @ weight.T)
    if name == "ours":
        linear_token_entropy = import_linear_token_entropy()
        kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        return lambda hidden, weight: linear_token_entropy(hidden, weight, **kwargs)
    if name == "ours-loss":
        # The weighted-sum form (gradients formed in the forward pass): the loss sum_r H_r.
        from em_hf.ops.linear_entropy import linear_entropy_loss

        kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        return lambda hidden, weight: linear_entropy_loss(
            hidden, weight, torch.ones(hidden.shape[0]), **kwargs
        )
    if name == "trl":
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction

        def trl_entropy(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            # ChunkedLogProbFunction needs targets even when only the entropy is used.
            targets = torch.zeros(hidden.shape[0], dtype=torch.long)
            _, entropy, *_ = ChunkedLogProbFunction.apply(
                hidden, weight, None, targets, 1.0, trl_chunk_size, None, 1.0, ("entropy",)
            )
            return entropy

        return trl_entropy
    raise ValueError(f"unknown lmhead variant {name!r}")


def lmhead_worker(spec: dict[str, Any]) -> dict[str, Any]:
    rows, hidden_size, vocab = spec["rows"], spec["hidden"], spec["vocab"]
    fn = load_lmhead_variant(spec["variant"], spec["chunk_size"], spec["trl_chunk_size"])
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, hidden_size, generator=generator).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=generator).mul_(3.0 / math.sqrt(hidden_size))
    weight.requires_grad_(True)  # logits of std ~3

    def call() -> tuple[torch.Tensor, ...]:
        entropy = fn(hidden, weight)
        return (entropy.detach(), *torch.autograd.grad(entropy.sum(), (hidden, weight)))

    measured = measure_peak(call, spec["repeats"])
    entropy, grad_hidden, grad_weight = measured.pop("result")  # of the last call: a cross-check
    # "ours-loss" returns the scalar sum of the entropies.
    measured["mean_entropy"] = entropy.item() / rows if entropy.dim() == 0 else entropy.mean().item()
    measured["grad_hidden_norm"] = grad_hidden.norm().item()
    measured["grad_weight_norm"] = grad_weight.norm().item()
    measured["logits_mib"] = rows * vocab * 4 / MIB
    return measured


# ----------------------------------------------------------------------------------------------------------
# EM-INF: the reference procedure, the processor alone, and generate
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


def make_reference_processor(n_steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


def make_ours_processor(n_steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from em_hf.generation.entropy_min import EntropyMinLogitsProcessor

    return EntropyMinLogitsProcessor(n_steps=n_steps)


def time_processor(processor: Callable, scores: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds per ``processor(input_ids, scores)`` call (after a warm-up) and its output."""
    input_ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    times, out = time_calls(lambda: processor(input_ids, scores), repeats)
    return statistics.median(times), out


def eminf_op_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time per call of ours and of the reference on random rows whose entropy stays above 0.3."""
    from em_hf.ops import token_entropy

    results = []
    for batch, vocab in spec["shapes"]:
        scores = make_logits(batch, vocab, torch.float32, seed=1, std=2.0)  # H ~ log(vocab) - 2
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
                    "min_entropy_after": token_entropy(ours_out).min().item(),
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
    from em_hf.models import load_default_model

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
# Worker entry point and spawning
# ----------------------------------------------------------------------------------------------------------

WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "token": token_worker,
    "roofline": roofline_worker,
    "lmhead": lmhead_worker,
    "eminf_op": eminf_op_worker,
    "eminf_generate": eminf_generate_worker,
}


def run_worker(spec_json: str) -> None:
    """Child side: run one measurement and print its JSON line."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    result = WORKERS[spec["task"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def spawn_worker(config: Config, spec: dict[str, Any], thp: str) -> dict[str, Any] | None:
    """Parent side: run ``spec`` in a fresh interpreter with the THP setting; None (and the error's
    tail printed) when the worker fails."""
    env = dict(os.environ)
    env.pop(THP_ENV, None)
    if THP_SETTINGS[thp] is not None:
        env[THP_ENV] = THP_SETTINGS[thp]
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(config.threads)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps({**spec, "threads": config.threads}),
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=config.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"    [worker timed out after {config.worker_timeout:.0f} s: {spec}]", flush=True)
        return None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n      ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
    print(f"    [worker failed (exit {done.returncode}): {spec}]\n      {tail}", flush=True)
    return None


# ----------------------------------------------------------------------------------------------------------
# Printing helpers
# ----------------------------------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 2) -> None:
    """An aligned text table; the first ``left`` columns are left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        aligned = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(("  " + "  ".join(aligned)).rstrip())
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(flush=True)


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``format(value, spec)``, or "-" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def ratio_text(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``12.30x``, or ``n/a`` when either side is missing."""
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def per_thp(values: dict[str, str]) -> str:
    """'12.30x (THP off = default), 4.10x (THP on)'."""
    return ", ".join(f"{text} ({THP_INLINE[thp]})" for thp, text in values.items())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def system_thp() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def print_header(config: Config) -> None:
    from em_hf.ops import backend

    versions = ", ".join(f"{name} {package_version(name)}" for name in ("transformers", "trl"))
    settings = " and ".join(THP_LABEL[t] for t in config.thp)
    print(
        "== em_hf entropy benchmark"
        + (" --quick: small shapes, NOT the issue's numbers" if config.quick else "")
    )
    print(f"  torch {torch.__version__}, {versions}")
    print(f"  em_hf backend: {backend()} (cpp = compiled CPU kernels; torch = chunked PyTorch fallback)")
    print(f"  CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); worker threads: {config.threads}")
    print(f"  system THP (/sys/kernel/mm/transparent_hugepage/enabled): {system_thp()}")
    print(f"  {THP_ENV} in this shell: {os.environ.get(THP_ENV, 'unset')}; workers run with THP {settings}")
    print("  (THP off = the variable unset = what a user gets by default)")
    print(f"  sections: {', '.join(config.sections)}\n", flush=True)


# ----------------------------------------------------------------------------------------------------------
# Section: token entropy
# ----------------------------------------------------------------------------------------------------------


def measure_roofline(config: Config) -> dict[str, dict[str, Any] | None]:
    spec = {"task": "roofline", "read_mib": config.roofline_read_mib}
    spec["exp_elements"] = config.roofline_exp_elements
    roofline = {thp: spawn_worker(config, spec, thp) for thp in config.thp}
    print(
        f"== roofline, {config.threads} thread(s): {config.roofline_read_mib} MiB pre-touched float32 "
        f"buffer, torch.exp on {config.roofline_exp_elements} floats"
    )
    rows = [
        [
            THP_LABEL[thp],
            fmt(r["read_gbs"], ".1f"),
            fmt(r["write_gbs"], ".1f"),
            fmt(r["exp_per_s"] / 1e9, ".2f"),
        ]
        for thp, r in roofline.items()
        if r
    ]
    print_table(["THP", "read GB/s (x.sum)", "write GB/s (x.fill_)", "Gexp/s (torch.exp out=)"], rows, left=1)
    return roofline


def traffic(rows: int, vocab: int, element_size: int, mode: str) -> tuple[float, float, float]:
    """(bytes read, bytes written, exps) that the op cannot avoid: forward reads the logits once;
    forward+backward reads them twice and writes the gradient; one exp per logit per pass."""
    logits_bytes = rows * vocab * element_size
    if mode == "fwd":
        return logits_bytes, 0.0, rows * vocab
    return 2 * logits_bytes, logits_bytes, 2 * rows * vocab


def roofline_seconds(roof: dict[str, Any] | None, read: float, written: float, exps: float) -> float | None:
    """Lower bound on the time: max(memory traffic at the measured bandwidths, exps at the exp rate)."""
    if not roof:
        return None
    memory = read / (roof["read_gbs"] * 1e9) + written / (roof["write_gbs"] * 1e9)
    return max(memory, exps / roof["exp_per_s"])


@dataclass(frozen=True)
class TokenCase:
    """One table of the token section: a shape, a dtype and a mode."""

    rows: int
    vocab: int
    dtype: str
    mode: str

    @property
    def logits_mib(self) -> float:
        return self.rows * self.vocab * DTYPES[self.dtype].itemsize / MIB

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "vocab": self.vocab, "dtype": self.dtype, "mode": self.mode}

    def title(self, repeats: int) -> str:
        return (
            f"== token_entropy {self.rows} x {self.vocab} {self.dtype} ({self.logits_mib:.0f} MiB of "
            f"logits), {self.mode}; best of {repeats} after a warm-up"
        )


TOKEN_HEADERS = ["variant", "THP", "best s", "GB/s", "Gexp/s", "% roof", "max RSS MiB"]
TOKEN_HEADERS += ["extra peak MiB (x logits)", "max|H err|", "max|grad err|"]


def token_row(
    case: TokenCase, variant: str, thp: str, result: dict[str, Any], roof: dict | None
) -> list[str]:
    best = min(result["times"])
    read, written, exps = traffic(case.rows, case.vocab, DTYPES[case.dtype].itemsize, case.mode)
    bound = roofline_seconds(roof, read, written, exps)
    extra = result["extra_peak_mib"]
    return [
        variant if variant != "ours" else f"ours ({result.get('backend', '?')})",
        THP_LABEL[thp],
        fmt(best, ".4f"),
        fmt((read + written) / best / 1e9, ".1f"),
        fmt(exps / best / 1e9, ".2f"),
        fmt(None if bound is None else 100 * bound / best, ".0f"),
        fmt(result["max_rss_mib"], ".0f"),
        f"{extra:.0f} ({extra / result['logits_mib']:.2f}x)",
        fmt(result["entropy_error"], ".1e"),
        fmt(result["grad_error"], ".1e"),
    ]


def print_token_ratios(results: dict[tuple[str, str], dict[str, Any]], mode: str, thps: list[str]) -> None:
    """'ours vs X' lines: speed-ups and extra-peak-memory ratios, per THP setting."""
    thps = [t for t in thps if ("ours", t) in results]
    if not thps:
        return

    def best(variant: str, thp: str) -> float | None:
        result = results.get((variant, thp))
        return min(result["times"]) if result else None

    def extra(variant: str, thp: str) -> float | None:
        result = results.get((variant, thp))
        return result["extra_peak_mib"] if result else None

    label = "forward" if mode == "fwd" else "fwd+bwd"
    for other in ("naive", "logsumexp", "compile", "trl"):
        speedups = {t: ratio_text(best(other, t), best("ours", t)) for t in thps}
        print(f"  ours {label} speed-up vs {other}: {per_thp(speedups)}")
    strongest = {}
    for t in thps:
        candidates = [b for b in (best("compile", t), best("trl", t)) if b]
        strongest[t] = ratio_text(min(candidates) if candidates else None, best("ours", t))
    print(f"  ours {label} speed-up vs the best of compile and trl: {per_thp(strongest)}")
    for other in ("naive", "compile", "trl"):
        memory = {t: ratio_text(extra("ours", t), extra(other, t)) for t in thps}
        print(f"  ours {label} extra peak memory / {other}'s: {per_thp(memory)}")
    print(flush=True)


TokenResults = dict[tuple[TokenCase, str, str], dict[str, Any]]  # (case, variant, THP) -> result


def run_token_group(config: Config, group: list[TokenCase]) -> TokenResults:
    """One worker per variant and THP setting, measuring every case of ``group``."""
    results: TokenResults = {}
    for variant in config.variants:
        for thp in config.thp:
            spec = {"task": "token", "variant": variant, "repeats": config.token_repeats}
            spec["cases"] = [case.as_dict() for case in group]
            outcome = spawn_worker(config, spec, thp)
            for case, result in zip(group, outcome["cases"] if outcome else [], strict=False):
                results[(case, variant, thp)] = result
    return results


def print_token_case(
    config: Config, case: TokenCase, results: TokenResults, roofline: dict[str, Any]
) -> None:
    """The table of one case and its 'ours vs X' lines."""
    print(case.title(config.token_repeats), flush=True)
    table, by_variant = [], {}
    for variant in config.variants:
        for thp in config.thp:
            result = results.get((case, variant, thp))
            if result is not None:
                by_variant[(variant, thp)] = result
                table.append(token_row(case, variant, thp, result, roofline.get(thp)))
    print_table(TOKEN_HEADERS, table)
    print_token_ratios(by_variant, case.mode, config.thp)


def token_groups(config: Config) -> list[list[TokenCase]]:
    """Cases measured together: each alone in fresh processes, or (``--quick``) all in one per variant."""
    cases = [
        TokenCase(rows, vocab, dtype, mode)
        for rows, vocab in config.token_shapes
        for dtype in config.dtypes
        for mode in MODES
    ]
    return [cases] if config.share_process else [[case] for case in cases]


def run_token_section(config: Config) -> dict[str, Any]:
    roofline = measure_roofline(config)
    if config.share_process:
        print("  (--quick: one process per variant and THP setting for all cases; max RSS covers them all)\n")
    collected = []
    for group in token_groups(config):
        results = run_token_group(config, group)
        for case in group:
            print_token_case(config, case, results, roofline)
        collected += [
            {**case.as_dict(), "variant": variant, "thp": thp, **result}
            for (case, variant, thp), result in results.items()
        ]
    scopes = ", ".join(sorted({r["peak_scope"] for r in collected}))
    print(f"  (extra peak: RSS high-water mark over the {scopes} minus the RSS just before them)\n")
    return {"roofline": roofline, "cases": collected}


# ----------------------------------------------------------------------------------------------------------
# Section: LM-head entropy
# ----------------------------------------------------------------------------------------------------------


def linear_entropy_import_error() -> str | None:
    """None when ``linear_token_entropy`` imports, else why not."""
    try:
        import_linear_token_entropy()
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def lmhead_row(variant: str, thp: str, result: dict[str, Any]) -> list[str]:
    return [
        variant,
        THP_LABEL[thp],
        fmt(min(result["times"]), ".3f"),
        fmt(result["max_rss_mib"], ".0f"),
        fmt(result["extra_peak_mib"], ".0f"),
        fmt(result["mean_entropy"], ".5f"),
        fmt(result["grad_hidden_norm"], ".5g"),
        fmt(result["grad_weight_norm"], ".5g"),
    ]


def print_lmhead_ratios(results: dict[tuple[str, str], dict[str, Any]], thps: list[str]) -> None:
    for thp, name in ((t, n) for t in thps for n in ("ours", "ours-loss")):
        ours, naive, trl = (results.get((v, thp)) for v in (name, "naive", "trl"))
        if not ours:
            continue
        print(f"  {THP_INLINE[thp]}, {name}:")
        if naive:
            time_ratio = ratio_text(min(ours["times"]), min(naive["times"]))
            print(f"    ours time / naive: {time_ratio} (target <= 1.2x)")
            extra = ratio_text(ours["extra_peak_mib"], naive["extra_peak_mib"])
            total = ratio_text(ours["max_rss_mib"], naive["max_rss_mib"])
            print(f"    ours peak / naive: extra peak {extra}, max RSS {total} (target < 0.25x)")
        if trl:
            print(f"    ours speed-up vs trl: {ratio_text(min(trl['times']), min(ours['times']))}")
            print(f"    ours extra peak / trl: {ratio_text(ours['extra_peak_mib'], trl['extra_peak_mib'])}")
    print(flush=True)


def run_lmhead_section(config: Config) -> dict[str, Any]:
    rows, hidden, vocab = config.lmhead_shape
    print(
        f"== LM-head entropy, {rows} rows x {hidden} hidden x {vocab} vocab float32 "
        f"({rows * vocab * 4 / MIB:.0f} MiB of logits), forward+backward (grads of hidden and W); "
        f"best of {config.lmhead_repeats} after a warm-up",
        flush=True,
    )
    missing = linear_entropy_import_error()
    variants = ["naive", "trl"] if missing else ["naive", "ours", "ours-loss", "trl"]
    if missing:
        print(f"  [skipping ours: linear_token_entropy does not import: {missing}]")
    chunk = "its default" if config.lmhead_chunk_size is None else str(config.lmhead_chunk_size)
    print(
        f"  naive = token_entropy(hidden @ W.T); ours = linear_token_entropy, chunk_size {chunk}; "
        "ours-loss = linear_entropy_loss (sum of H, gradients formed in forward)"
    )
    print(
        "  trl = trl.kernels.ChunkedLogProbFunction, outputs=('entropy',), dummy targets; torch tiles "
        f"on CPU (no Triton) of 4096 rows x {config.trl_chunk_size} vocab"
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in variants:
        for thp in config.thp:
            spec = {"task": "lmhead", "variant": variant, "rows": rows, "hidden": hidden, "vocab": vocab}
            spec |= {"repeats": config.lmhead_repeats, "chunk_size": config.lmhead_chunk_size}
            spec["trl_chunk_size"] = config.trl_chunk_size
            result = spawn_worker(config, spec, thp)
            if result is not None:
                results[(variant, thp)] = result
    headers = [
        "variant",
        "THP",
        "best s",
        "max RSS MiB",
        "extra peak MiB",
        "mean H",
        "|dH/dhidden|",
        "|dH/dW|",
    ]
    print_table(headers, [lmhead_row(v, t, r) for (v, t), r in results.items()])
    print_lmhead_ratios(results, config.thp)
    return {
        "cases": [{"variant": v, "thp": t, **r} for (v, t), r in results.items()],
        "skipped_ours": missing,
    }


# ----------------------------------------------------------------------------------------------------------
# Section: EM-INF
# ----------------------------------------------------------------------------------------------------------


def eminf_op_row(thp: str, row: dict[str, Any]) -> list[str]:
    return [
        f"[{row['batch']}, {row['vocab']}]",
        THP_LABEL[thp],
        str(row["n_steps"]),
        fmt(1e3 * row["ours_s"], ".2f"),
        fmt(1e3 * row["reference_s"], ".2f"),
        ratio_text(row["reference_s"], row["ours_s"]),
        fmt(row["max_abs_diff"], ".1e"),
        fmt(row["min_entropy_after"], ".2f"),
    ]


def run_eminf_op(config: Config) -> list[dict[str, Any]]:
    print(
        f"== EM-INF processor alone vs the reference (Adam on autograd, row by row); median of "
        f"{config.eminf_repeats} calls after a warm-up;\n"
        "   random rows whose entropy stays above the threshold, so every step runs",
        flush=True,
    )
    spec = {"task": "eminf_op", "shapes": config.eminf_shapes, "steps": config.eminf_steps}
    spec["repeats"] = config.eminf_repeats
    table, collected = [], []
    for thp in config.thp:
        result = spawn_worker(config, spec, thp)
        for row in result["rows"] if result else []:
            collected.append({"thp": thp, **row})
            table.append(eminf_op_row(thp, row))
    headers = ["scores", "THP", "n_steps", "ours ms", "reference ms", "speed-up of ours", "max|ours-ref|"]
    print_table([*headers, "min H after"], table)
    return collected


def run_eminf_generate(config: Config) -> list[dict[str, Any]]:
    n = config.gen_new_tokens
    print(
        f"== EM-INF in model.generate: default model, do_sample, T=0.1, max_new_tokens=min_new_tokens={n}; "
        f"median of {config.gen_repeats} after a warm-up, variants interleaved",
        flush=True,
    )
    spec = {"task": "eminf_generate", "batches": config.gen_batches, "steps": config.eminf_steps}
    spec |= {"new_tokens": n, "repeats": config.gen_repeats}
    table, collected = [], []
    for thp in config.thp:
        result = spawn_worker(config, spec, thp)
        rows = result["rows"] if result else []
        plain = {row["batch"]: row["seconds"] for row in rows if row["variant"] == "plain"}
        for row in rows:
            overhead = 100 * (row["seconds"] / plain[row["batch"]] - 1)
            collected.append({"thp": thp, **row, "overhead_pct": overhead})
            per_step = fmt(1e3 * row["seconds"] / max(row["steps"], 1), ".1f")
            shown = "" if row["variant"] == "plain" else f"{overhead:+.1f}%"
            table.append([row["variant"], THP_LABEL[thp], row["batch"], fmt(row["seconds"], ".3f"), per_step])
            table[-1] += [row["steps"], shown]
    print_table(["variant", "THP", "batch", "s/call", "ms/step", "steps", "overhead vs plain"], table)
    for case in collected:
        if case["variant"] == f"ours n_steps={config.eminf_steps[0]}":
            where = f"batch {case['batch']}, {THP_INLINE[case['thp']]}"
            overhead = f"{case['overhead_pct']:+.1f}%"
            print(f"  {case['variant']} overhead on generate, {where}: {overhead} (target <= 3%)")
    print(flush=True)
    return collected


def run_eminf_section(config: Config) -> dict[str, Any]:
    return {"op": run_eminf_op(config), "generate": run_eminf_generate(config)}


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------

SECTION_RUNNERS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "token": run_token_section,
    "lmhead": run_lmhead_section,
    "eminf": run_eminf_section,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return
    config = make_config(args)
    print_header(config)
    start = time.perf_counter()
    results = {name: SECTION_RUNNERS[name](config) for name in config.sections}
    print(f"== done in {time.perf_counter() - start:.0f} s")
    if config.json_path:
        Path(config.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_path).write_text(json.dumps(results, indent=1, default=str))
        print(f"   results written to {config.json_path}")


if __name__ == "__main__":
    main()
