"""Benchmark of token entropy: H of [rows, vocab] logits, forward and forward+backward (issue 3).

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_token_entropy.py                  # full size (long)
    python examples/benchmarks/bench_token_entropy.py --quick          # 256 x 4096: does it run? (~1 min)
    python examples/benchmarks/bench_token_entropy.py --dtypes float32 --thp off \\
        --shapes 4096x49152 --variants naive,ours                     # a subset
    python examples/benchmarks/bench_token_entropy.py --threads 2 --json runs/bench_token.json

Measures the entropy of [rows, vocab] logits, forward and forward+backward (``autograd.grad`` of
H.sum()), at 4096 x 49152 and 2048 x 151936, float32 and bfloat16. Variants: naive
``-(softmax * log_softmax).sum(-1)``, the logsumexp form ``lse - (softmax * z).sum(-1)``,
``torch.compile`` of the logsumexp form, trl's chunked ``entropy_from_logits`` and ours
(``em_hf.ops.token_entropy``). Baselines compute in the input dtype, as written; ours accumulates in
float32. Time = best of the repeats after one warm-up call on logits created (and so touched) once
per process. Memory: the process's max RSS, and the extra peak during the timed calls over the RSS
just before them. GB/s counts the minimal traffic (forward: the logits read once; forward+backward:
read twice, the gradient written once); exps count one per logit per pass (1 forward, 2 fwd+bwd).
Roofline: read and write bandwidth and exp throughput measured in a child process (pre-touched
buffers); "% roof" = the roofline's lower bound on the time / the time. The errors are against
float64 on the first rows. After each table: "ours vs X" speed-ups and extra-peak-memory ratios.

Every case runs in a fresh subprocess with THP off (``THP_MEM_ALLOC_ENABLE`` unset, the default)
and on (see ``_harness.py``); ``--quick`` shrinks shapes and repeats, runs THP off only (unless
``--thp`` is given) and measures all cases of a variant in one process. Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _harness as harness
import torch

VARIANTS = ("naive", "logsumexp", "compile", "trl", "ours")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
SHAPES = [(4096, 49152), (2048, 151936)]  # rows, vocab (--quick: 256 x 4096)
ERROR_ROWS = 64  # rows checked against a float64 reference after timing

EntropyFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# The variants and the worker
# ----------------------------------------------------------------------------------------------------------


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(-1)


def logsumexp_entropy(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def load_variant(name: str) -> EntropyFn:
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


def measure_case(fn: EntropyFn, case: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Time, memory and error of ``fn`` on one (rows, vocab, dtype, mode) case."""
    backward = case["mode"] == "fwd+bwd"
    logits = harness.make_logits(case["rows"], case["vocab"], DTYPES[case["dtype"]]).requires_grad_(backward)
    measured = harness.measure_peak(entropy_call(fn, logits, backward), repeats)
    entropy, grad = measured.pop("result")  # of the last call
    ref_entropy, ref_grad = reference_entropy_and_grad(logits[:ERROR_ROWS])
    measured["entropy_error"] = (entropy[:ERROR_ROWS].double() - ref_entropy).abs().max().item()
    if grad is not None:
        grad = grad[:ERROR_ROWS].double()
    measured["grad_error"] = None if grad is None else (grad - ref_grad).abs().max().item()
    measured["logits_mib"] = logits.numel() * logits.element_size() / harness.MIB
    return measured


def token_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant on a list of cases (one case per process, except with ``--quick``)."""
    fn = load_variant(spec["variant"])
    results = [measure_case(fn, case, spec["repeats"]) for case in spec["cases"]]
    if spec["variant"] == "ours":
        from em_hf.ops import backend

        for result in results:
            result["backend"] = backend()
    return {"cases": results}


# ----------------------------------------------------------------------------------------------------------
# The section: cases, tables, ratios
# ----------------------------------------------------------------------------------------------------------


def traffic(rows: int, vocab: int, element_size: int, mode: str) -> tuple[float, float, float]:
    """(bytes read, bytes written, exps) that the op cannot avoid: forward reads the logits once;
    forward+backward reads them twice and writes the gradient; one exp per logit per pass."""
    logits_bytes = rows * vocab * element_size
    if mode == "fwd":
        return logits_bytes, 0.0, rows * vocab
    return 2 * logits_bytes, logits_bytes, 2 * rows * vocab


@dataclass(frozen=True)
class TokenCase:
    """One table of the section: a shape, a dtype and a mode."""

    rows: int
    vocab: int
    dtype: str
    mode: str

    @property
    def logits_mib(self) -> float:
        return self.rows * self.vocab * DTYPES[self.dtype].itemsize / harness.MIB

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "vocab": self.vocab, "dtype": self.dtype, "mode": self.mode}

    def title(self, repeats: int) -> str:
        return (
            f"== token_entropy {self.rows} x {self.vocab} {self.dtype} ({self.logits_mib:.0f} MiB of "
            f"logits), {self.mode}; best of {repeats} after a warm-up"
        )


@dataclass
class TokenSettings:
    """What the section runs; ``--quick`` shrinks every size and repeat count."""

    variants: list[str]
    cases: list[TokenCase]
    repeats: int
    roofline_read_mib: int
    roofline_exp_elements: int
    share_process: bool  # --quick: one process per variant for all cases

    @classmethod
    def from_args(cls, run: harness.Run, args: argparse.Namespace) -> TokenSettings:
        shapes = harness.parse_shapes(args.shapes, 2) if args.shapes else run.size([(256, 4096)], SHAPES)
        dtypes = harness.parse_list(args.dtypes, tuple(DTYPES), "dtype")
        return cls(
            variants=harness.parse_list(args.variants, VARIANTS, "variant"),
            cases=[TokenCase(r, v, d, m) for r, v in shapes for d in dtypes for m in MODES],
            repeats=run.timed_repeats(1, 3),
            roofline_read_mib=run.size(128, 1024),
            roofline_exp_elements=run.size(8, 64) * 2**20,
            share_process=run.quick,
        )

    def groups(self) -> list[list[TokenCase]]:
        """Cases measured together: each alone in fresh processes, or (``--quick``) all in one per variant."""
        return [self.cases] if self.share_process else [[case] for case in self.cases]


HEADERS = ["variant", "THP", "best s", "GB/s", "Gexp/s", "% roof", "max RSS MiB"]
HEADERS += ["extra peak MiB (x logits)", "max|H err|", "max|grad err|"]
Results = dict[tuple[TokenCase, str, str], dict[str, Any]]  # (case, variant, THP) -> result


def token_row(
    case: TokenCase, variant: str, thp: str, result: dict[str, Any], roof: dict | None
) -> list[str]:
    best = min(result["times"])
    read, written, exps = traffic(case.rows, case.vocab, DTYPES[case.dtype].itemsize, case.mode)
    bound = harness.roofline_seconds(roof, read, written, exps)
    extra = result["extra_peak_mib"]
    return [
        variant if variant != "ours" else f"ours ({result.get('backend', '?')})",
        harness.THP_LABEL[thp],
        harness.fmt(best, ".4f"),
        harness.fmt((read + written) / best / 1e9, ".1f"),
        harness.fmt(exps / best / 1e9, ".2f"),
        harness.fmt(None if bound is None else 100 * bound / best, ".0f"),
        harness.fmt(result["max_rss_mib"], ".0f"),
        f"{extra:.0f} ({extra / result['logits_mib']:.2f}x)",
        harness.fmt(result["entropy_error"], ".1e"),
        harness.fmt(result["grad_error"], ".1e"),
    ]


def print_ratios(results: dict[tuple[str, str], dict[str, Any]], mode: str, thps: list[str]) -> None:
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
        speedups = {t: harness.ratio_text(best(other, t), best("ours", t)) for t in thps}
        print(f"  ours {label} speed-up vs {other}: {harness.per_thp(speedups)}")
    strongest = {}
    for t in thps:
        candidates = [b for b in (best("compile", t), best("trl", t)) if b]
        strongest[t] = harness.ratio_text(min(candidates) if candidates else None, best("ours", t))
    print(f"  ours {label} speed-up vs the best of compile and trl: {harness.per_thp(strongest)}")
    for other in ("naive", "compile", "trl"):
        memory = {t: harness.ratio_text(extra("ours", t), extra(other, t)) for t in thps}
        print(f"  ours {label} extra peak memory / {other}'s: {harness.per_thp(memory)}")
    print(flush=True)


def run_group(run: harness.Run, settings: TokenSettings, group: list[TokenCase]) -> Results:
    """One worker per variant and THP setting, measuring every case of ``group``."""
    cases = [case.as_dict() for case in group]
    outcomes = run.spawn_grid(
        token_worker,
        settings.variants,
        lambda variant: {"variant": variant, "repeats": settings.repeats, "cases": cases},
    )
    results: Results = {}
    for (variant, thp), outcome in outcomes.items():
        for case, result in zip(group, outcome["cases"], strict=False):
            results[(case, variant, thp)] = result
    return results


def print_case(
    run: harness.Run, settings: TokenSettings, case: TokenCase, results: Results, roofline: dict[str, Any]
) -> None:
    """The table of one case and its 'ours vs X' lines."""
    print(case.title(settings.repeats), flush=True)
    table, by_variant = [], {}
    for variant in settings.variants:
        for thp in run.thp:
            result = results.get((case, variant, thp))
            if result is not None:
                by_variant[(variant, thp)] = result
                table.append(token_row(case, variant, thp, result, roofline.get(thp)))
    harness.print_table(HEADERS, table)
    print_ratios(by_variant, case.mode, list(run.thp))


def run_section(run: harness.Run, settings: TokenSettings) -> dict[str, Any]:
    roofline = run.roofline(settings.roofline_read_mib, settings.roofline_exp_elements)
    if settings.share_process:
        print("  (--quick: one process per variant and THP setting for all cases; max RSS covers them all)\n")
    collected = []
    for group in settings.groups():
        results = run_group(run, settings, group)
        for case in group:
            print_case(run, settings, case, results, roofline)
        collected += [
            {**case.as_dict(), "variant": variant, "thp": thp, **result}
            for (case, variant, thp), result in results.items()
        ]
    scopes = ", ".join(sorted({r["peak_scope"] for r in collected}))
    print(f"  (extra peak: RSS high-water mark over the {scopes} minus the RSS just before them)\n")
    return {"roofline": roofline, "cases": collected}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="float32,bfloat16", help="token section dtypes")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="token section variants")
    parser.add_argument("--shapes", default=None, help="token section shapes, e.g. 4096x49152,2048x151936")


SECTION = harness.Section("token", run_section, add_arguments, TokenSettings.from_args, takes_repeats=True)

if __name__ == "__main__":
    harness.main([SECTION], __doc__)
