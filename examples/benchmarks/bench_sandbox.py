"""Per-program cost of the code sandbox: bubblewrap (``isolation="bwrap"``, the default), the opt-in
``isolation="process"``, and the sandbox it replaced (a process under an audit hook and ``unshare``
namespaces, read from git at ``--baseline-ref``). Prints the median wall time of one ``run_code``
call per program and the ratios to the old sandbox; asserts nothing.

    python examples/benchmarks/bench_sandbox.py                 # 40 runs of each program
    python examples/benchmarks/bench_sandbox.py --runs 10 --baseline-ref eed866d

Programs: a trivial one (one assert: start-up cost), and the first LeetCode item's correct solution
with its 100 asserts (read from the benchmark folder when it is there; otherwise a synthetic
100-assert test). The old sandbox ran the asserts in the candidate's process; the new one reports
each checked value to the parent, so that cost is included (the tests are rewritten once per problem
and cached, as in an evaluation, where every candidate of a problem runs the same tests).

Not on ``_harness.py``: that harness measures torch kernels in fresh worker interpreters; here each
measured call already starts its own sandbox.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from em_hf.eval.benchmarks import find_benchmarks_dir, load_benchmark
from em_hf.eval.sandbox import check_sandbox, run_code

BASELINE_REF = "eed866d"  # the last commit with the audit-hook sandbox
TRIVIAL = ("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n")
SOLUTION = (
    "class Solution:\n"
    "    def minimumPushes(self, word: str) -> int:\n"
    "        return sum(i // 8 + 1 for i in range(len(word)))\n"
)


def load_baseline(ref: str):
    """The old ``em_hf/eval/sandbox.py`` at ``ref``, imported from a temporary file."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(
        ["git", "show", f"{ref}:em_hf/eval/sandbox.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_sandbox_")) / "old_sandbox.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def leetcode_program() -> tuple[str, str, str]:
    if find_benchmarks_dir() is not None:
        item = load_benchmark("leetcode", limit=1)[0]
        return "leetcode item 1 (100 asserts)", SOLUTION, item.tests
    words = ["ab" * (i % 13) for i in range(100)]
    answers = [sum(j // 8 + 1 for j in range(len(word))) for word in words]
    tests = "".join(
        f"assert Solution().minimumPushes({w!r}) == {a}\n" for w, a in zip(words, answers, strict=True)
    )
    return "synthetic (100 asserts)", SOLUTION, tests


def median_seconds(calls: dict, runs: int) -> dict[str, float]:
    """Median wall time of each call; the calls alternate, so a busy machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            result = call()
            times[name].append(time.perf_counter() - start)
            if result.status != "passed":
                raise RuntimeError(f"the benchmark program did not pass under {name}: {result}")
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40, help="calls per program and sandbox (default 40)")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the old sandbox")
    args = parser.parse_args()
    print(check_sandbox())
    old = load_baseline(args.baseline_ref)
    old_kind = "audit hook + unshare" if old.sandbox_namespaces_available() else "audit hook, no namespaces"
    warnings.simplefilter("ignore", RuntimeWarning)  # isolation="process" warns once
    print(
        f"\nmedian seconds per run_code call over {args.runs} calls; old = {args.baseline_ref} ({old_kind})\n"
    )
    print("| program | old | bwrap | process | bwrap / old | process / old |")
    print("|---|---|---|---|---|---|")
    for name, code, tests in [("trivial (1 assert)", *TRIVIAL), leetcode_program()]:
        calls = {
            "old": lambda code=code, tests=tests: old.run_code(code, tests),
            "bwrap": lambda code=code, tests=tests: run_code(code, tests, isolation="bwrap"),
            "process": lambda code=code, tests=tests: run_code(code, tests, isolation="process"),
        }
        t = median_seconds(calls, args.runs)
        print(
            f"| {name} | {t['old']:.3f} | {t['bwrap']:.3f} | {t['process']:.3f} | "
            f"{t['bwrap'] / t['old']:.2f} | {t['process'] / t['old']:.2f} |"
        )


if __name__ == "__main__":
    main()
