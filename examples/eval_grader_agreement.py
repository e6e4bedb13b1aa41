"""Check the math grader on gold solutions: every gold solution must grade as correct against its
own reference (agreement rate), and, as a check that the grader is not lenient, against the NEXT
item's reference it must grade as wrong unless the two references are the same answer.

    python examples/eval_grader_agreement.py            # MATH500 and Minerva from ../shared/benchmarks
    python examples/eval_grader_agreement.py --benchmarks math500 aime amc23
"""

from __future__ import annotations

import argparse
import time

from em_hf.eval import grade_math, load_benchmark
from em_hf.utils.answers import normalize_answer


def agreement(name: str) -> dict[str, float]:
    items = [item for item in load_benchmark(name) if item.metadata.get("solution")]
    if not items:
        raise SystemExit(f"{name}: no items with a gold solution to check.")
    start = time.perf_counter()
    accepted = [grade_math(item.metadata["solution"], item.reference) for item in items]
    shifted = list(zip(items, items[1:] + items[:1], strict=True))
    different = [(a, b) for a, b in shifted if normalize_answer(a.reference) != normalize_answer(b.reference)]
    false_accepts = [(a, b) for a, b in different if grade_math(a.metadata["solution"], b.reference)]
    for a, b in false_accepts:
        print(f"  {name}: gold of {a.id} ({a.reference!r}) accepted for {b.id}'s reference {b.reference!r}")
    for item, ok in zip(items, accepted, strict=True):
        if not ok:
            print(f"  {name}: gold solution of {item.id} rejected against {item.reference!r}")
    return {
        "items": len(items),
        "agreement": sum(accepted) / len(items),
        "pairs": len(different),
        "false_accepts": len(false_accepts),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmarks", nargs="+", default=["math500", "minerva"])
    args = parser.parse_args()
    print("| benchmark | gold solutions | accepted vs own reference | mismatched pairs | false accepts | s |")
    print("|---|---|---|---|---|---|")
    for name in args.benchmarks:
        r = agreement(name)
        print(
            f"| {name} | {r['items']} | {100 * r['agreement']:.1f}% | {r['pairs']} | {r['false_accepts']} "
            f"| {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
