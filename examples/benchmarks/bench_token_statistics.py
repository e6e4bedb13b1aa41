"""What the extra per-token statistics cost: entropy alone vs entropy + self-certainty + the sampled
token's log-probability, from the same pass.

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_token_statistics.py            # 1024 x 49152 logits, 256 LM-head rows
    python examples/benchmarks/bench_token_statistics.py --quick    # small shapes: does it run?
    python examples/benchmarks/bench_token_statistics.py --rows 2048 --vocab 151936 --repeats 7

Two pairs, each timed in this process on the active backend (``em_hf.ops.backend()``), forward and
forward+backward (``autograd.grad`` of the sum of every output):

* ``token_entropy(logits)`` vs ``token_statistics(logits, labels=...)`` on [rows, vocab] logits;
* ``linear_token_entropy(hidden, W, labels=...)`` vs the same with ``self_certainty=True``
  (the LM-head path: chunked matmul + the same kernels).

Time = the best of ``--repeats`` calls after one warm-up, the two sides of a pair called alternately
(so that load from other processes hits both alike). The ratio "stats / entropy" is the cost
of the extra outputs relative to the pass that computes the entropy alone (1.10x = 10% more).
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import _harness as harness
import torch

from em_hf.ops import backend, linear_token_entropy, token_entropy, token_statistics


def _pair(base: Callable[[], Any], extra: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``base`` and ``extra``, called alternately (after one warm-up
    each) so that a busy machine slows both sides alike."""
    base_times, extra_times = [], []
    for _ in range(repeats):
        base_times += harness.time_calls(base, 1, warmup=0 if base_times else 1)[0]
        extra_times += harness.time_calls(extra, 1, warmup=0 if extra_times else 1)[0]
    return min(base_times), min(extra_times)


def _forward_backward(outputs_of, leaf: torch.Tensor):
    def call():
        outputs = outputs_of()
        total = sum(o.sum() for o in outputs if o is not None)
        return torch.autograd.grad(total, leaf)

    return call


def token_pair(rows: int, vocab: int, dtype: torch.dtype, repeats: int) -> list[list[str]]:
    logits = harness.make_logits(rows, vocab, dtype)
    labels = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(1))
    table = []
    with torch.no_grad():
        base, extra = _pair(
            lambda: token_entropy(logits, 0.7), lambda: token_statistics(logits, 0.7, labels), repeats
        )
    table.append(["token", f"{rows}x{vocab} {dtype}", "fwd", base, extra])
    leaf = logits.clone().requires_grad_(True)
    base, extra = _pair(
        _forward_backward(lambda: (token_entropy(leaf, 0.7),), leaf),
        _forward_backward(lambda: token_statistics(leaf, 0.7, labels), leaf),
        repeats,
    )
    table.append(["token", f"{rows}x{vocab} {dtype}", "fwd+bwd", base, extra])
    return table


def lm_head_pair(rows: int, vocab: int, hidden_size: int, repeats: int) -> list[list[str]]:
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(rows, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5 * 3
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    shape = f"{rows}x{hidden_size} @ {vocab}"

    def base_of(h):
        return linear_token_entropy(h, weight, labels=labels)

    def extra_of(h):
        return linear_token_entropy(h, weight, labels=labels, self_certainty=True)

    with torch.no_grad():
        base, extra = _pair(lambda: base_of(hidden), lambda: extra_of(hidden), repeats)
    table = [["lm-head", shape, "fwd", base, extra]]
    leaf = hidden.clone().requires_grad_(True)
    base, extra = _pair(
        _forward_backward(lambda: base_of(leaf), leaf),
        _forward_backward(lambda: extra_of(leaf), leaf),
        repeats,
    )
    table.append(["lm-head", shape, "fwd+bwd", base, extra])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden-rows", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="256 x 4096 logits, 64 LM-head rows, 3 repeats")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rows, args.vocab, args.hidden_rows, args.repeats = 256, 4096, 64, 3
    print(f"backend {backend()}, {torch.get_num_threads()} threads, {harness.cpu_model()}", flush=True)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        rows += token_pair(args.rows, args.vocab, dtype, args.repeats)
    rows += lm_head_pair(args.hidden_rows, args.vocab, args.hidden_size, args.repeats)
    harness.print_table(
        ["op", "shape", "mode", "entropy (s)", "+ SC + log p (s)", "stats / entropy"],
        [
            [op, shape, mode, f"{base:.4f}", f"{extra:.4f}", harness.ratio_text(extra, base)]
            for op, shape, mode, base, extra in rows
        ],
        left=3,
    )


if __name__ == "__main__":
    main()
