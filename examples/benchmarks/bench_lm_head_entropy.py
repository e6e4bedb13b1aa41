"""Benchmark of LM-head entropy: H from hidden states and the LM-head weight, forward+backward (issue 3).

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_lm_head_entropy.py                # 8192 x 576 x 49152 (long)
    python examples/benchmarks/bench_lm_head_entropy.py --quick        # 512 x 64 x 4096: does it run?
    python examples/benchmarks/bench_lm_head_entropy.py --lmhead-shape 8192x576x49152 --repeats 1 \\
        --thp off --lmhead-chunk-size 1024                            # one THP setting, a chunk size

Measures the entropy of ``hidden @ W.T`` per row, forward and backward (gradients of hidden and
weight, float32, logits of std ~3), variants:

- naive: ``em_hf.ops.token_entropy(hidden @ W.T)`` (the full logits in memory);
- ours: ``em_hf.ops.linear_entropy.linear_token_entropy`` (chunks of rows, logits recomputed in
  backward), ``--lmhead-chunk-size`` or its default;
- ours-loss: ``linear_entropy_loss`` (the sum of H; gradients formed in the forward pass);
- trl: ``trl.kernels.ChunkedLogProbFunction`` with outputs=('entropy',) and dummy targets (its torch
  tiles on CPU, ``--trl-chunk-size`` vocabulary columns).

Columns: best time of the repeats after a warm-up, max RSS, extra peak over the RSS before the timed
calls, mean H and gradient norms (a cross-check of the variants); then ours vs naive (time, memory)
and vs trl. Each variant runs in a fresh subprocess with THP off (``THP_MEM_ALLOC_ENABLE`` unset, the
default) and on (see ``_harness.py``); ``--quick`` runs THP off only. Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import _harness as harness
import torch

TRL_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in trl 1.16

LmHeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# The variants and the worker
# ----------------------------------------------------------------------------------------------------------


def import_linear_token_entropy() -> Callable[..., torch.Tensor]:
    """``linear_token_entropy`` from em_hf (ImportError while it does not exist yet)."""
    try:
        from em_hf.ops.linear_entropy import linear_token_entropy
    except ImportError:
        from em_hf.ops import linear_token_entropy  # type: ignore[attr-defined]
    return linear_token_entropy


def load_variant(name: str, chunk_size: int | None, trl_chunk_size: int) -> LmHeadFn:
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
    fn = load_variant(spec["variant"], spec["chunk_size"], spec["trl_chunk_size"])
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, hidden_size, generator=generator).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=generator).mul_(3.0 / math.sqrt(hidden_size))
    weight.requires_grad_(True)  # logits of std ~3

    def call() -> tuple[torch.Tensor, ...]:
        entropy = fn(hidden, weight)
        return (entropy.detach(), *torch.autograd.grad(entropy.sum(), (hidden, weight)))

    measured = harness.measure_peak(call, spec["repeats"])
    entropy, grad_hidden, grad_weight = measured.pop("result")  # of the last call: a cross-check
    # "ours-loss" returns the scalar sum of the entropies.
    measured["mean_entropy"] = entropy.item() / rows if entropy.dim() == 0 else entropy.mean().item()
    measured["grad_hidden_norm"] = grad_hidden.norm().item()
    measured["grad_weight_norm"] = grad_weight.norm().item()
    measured["logits_mib"] = rows * vocab * 4 / harness.MIB
    return measured


# ----------------------------------------------------------------------------------------------------------
# The section: table and ratios
# ----------------------------------------------------------------------------------------------------------


def linear_entropy_import_error() -> str | None:
    """None when ``linear_token_entropy`` imports, else why not."""
    try:
        import_linear_token_entropy()
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


HEADERS = ["variant", "THP", "best s", "max RSS MiB", "extra peak MiB", "mean H", "|dH/dhidden|", "|dH/dW|"]


def lmhead_row(variant: str, thp: str, result: dict[str, Any]) -> list[str]:
    return [
        variant,
        harness.THP_LABEL[thp],
        harness.fmt(min(result["times"]), ".3f"),
        harness.fmt(result["max_rss_mib"], ".0f"),
        harness.fmt(result["extra_peak_mib"], ".0f"),
        harness.fmt(result["mean_entropy"], ".5f"),
        harness.fmt(result["grad_hidden_norm"], ".5g"),
        harness.fmt(result["grad_weight_norm"], ".5g"),
    ]


def print_ratios(results: dict[tuple[str, str], dict[str, Any]], thps: list[str]) -> None:
    for thp, name in ((t, n) for t in thps for n in ("ours", "ours-loss")):
        ours, naive, trl = (results.get((v, thp)) for v in (name, "naive", "trl"))
        if not ours:
            continue
        print(f"  {harness.THP_INLINE[thp]}, {name}:")
        if naive:
            time_ratio = harness.ratio_text(min(ours["times"]), min(naive["times"]))
            print(f"    ours time / naive: {time_ratio} (target <= 1.2x)")
            extra = harness.ratio_text(ours["extra_peak_mib"], naive["extra_peak_mib"])
            total = harness.ratio_text(ours["max_rss_mib"], naive["max_rss_mib"])
            print(f"    ours peak / naive: extra peak {extra}, max RSS {total} (target < 0.25x)")
        if trl:
            speedup = harness.ratio_text(min(trl["times"]), min(ours["times"]))
            print(f"    ours speed-up vs trl: {speedup}")
            extra = harness.ratio_text(ours["extra_peak_mib"], trl["extra_peak_mib"])
            print(f"    ours extra peak / trl: {extra}")
    print(flush=True)


def prepare(run: harness.Run, args: argparse.Namespace) -> dict[str, Any]:
    """The workers' spec but the variant; ``--quick`` shrinks the shape and the repeats."""
    if args.lmhead_shape:
        (shape,) = harness.parse_shapes(args.lmhead_shape, 3)
    else:
        shape = run.size((512, 64, 4096), (8192, 576, 49152))
    spec = dict(zip(("rows", "hidden", "vocab"), shape, strict=True))
    spec["repeats"] = run.timed_repeats(1, 2)
    return spec | {"chunk_size": args.lmhead_chunk_size, "trl_chunk_size": args.trl_chunk_size}


def run_section(run: harness.Run, spec: dict[str, Any]) -> dict[str, Any]:
    rows, hidden, vocab, repeats = spec["rows"], spec["hidden"], spec["vocab"], spec["repeats"]
    print(
        f"== LM-head entropy, {rows} rows x {hidden} hidden x {vocab} vocab float32 "
        f"({rows * vocab * 4 / harness.MIB:.0f} MiB of logits), forward+backward (grads of hidden and W); "
        f"best of {repeats} after a warm-up",
        flush=True,
    )
    missing = linear_entropy_import_error()
    variants = ["naive", "trl"] if missing else ["naive", "ours", "ours-loss", "trl"]
    if missing:
        print(f"  [skipping ours: linear_token_entropy does not import: {missing}]")
    chunk = "its default" if spec["chunk_size"] is None else str(spec["chunk_size"])
    print(
        f"  naive = token_entropy(hidden @ W.T); ours = linear_token_entropy, chunk_size {chunk}; "
        "ours-loss = linear_entropy_loss (sum of H, gradients formed in forward)"
    )
    print(
        "  trl = trl.kernels.ChunkedLogProbFunction, outputs=('entropy',), dummy targets; torch tiles "
        f"on CPU (no Triton) of 4096 rows x {spec['trl_chunk_size']} vocab"
    )
    results = run.spawn_grid(lmhead_worker, variants, lambda variant: {"variant": variant, **spec})
    harness.print_table(HEADERS, [lmhead_row(v, t, r) for (v, t), r in results.items()])
    print_ratios(results, list(run.thp))
    return {
        "cases": [{"variant": v, "thp": t, **r} for (v, t), r in results.items()],
        "skipped_ours": missing,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lmhead-shape", default=None, help="lmhead rows x hidden x vocab, e.g. 8192x576x49152"
    )
    parser.add_argument(
        "--lmhead-chunk-size", type=int, default=None, help="chunk_size for ours (default: its own)"
    )
    parser.add_argument("--trl-chunk-size", type=int, default=TRL_VOCAB_CHUNK, help="trl's vocabulary chunk")


SECTION = harness.Section("lmhead", run_section, add_arguments, prepare, takes_repeats=True)

if __name__ == "__main__":
    harness.main([SECTION], __doc__)
