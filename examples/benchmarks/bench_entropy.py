"""All three entropy benchmarks in one run (issue 3, "Benchmark"): token, lmhead and eminf.

From the repository root, with the package installed (``. .venv/bin/activate``):

    python examples/benchmarks/bench_entropy.py                   # everything, full size (long)
    python examples/benchmarks/bench_entropy.py --quick           # small shapes: does it run? (~2-3 min)
    python examples/benchmarks/bench_entropy.py --sections token  # one or more of token,lmhead,eminf
    python examples/benchmarks/bench_entropy.py --threads 2 --json runs/bench.json

It takes every option of the three section scripts beside it, which also run on their own and say in
their docstrings what they measure: ``bench_token_entropy.py`` (token), ``bench_lm_head_entropy.py``
(lmhead) and ``bench_em_inf.py`` (eminf); ``_harness.py`` holds the fresh-subprocess workers, the THP
off/on runs, the roofline and the tables. Nothing here asserts a timing.
"""

from _harness import main
from bench_em_inf import SECTION as EMINF
from bench_lm_head_entropy import SECTION as LMHEAD
from bench_token_entropy import SECTION as TOKEN

if __name__ == "__main__":
    main([TOKEN, LMHEAD, EMINF], __doc__)
