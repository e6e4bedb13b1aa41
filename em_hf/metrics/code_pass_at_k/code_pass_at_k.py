r"""``code_pass_at_k``: pass@k of candidate programs run against their problem's tests in em_hf's sandbox."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import datasets

from em_hf.eval.sandbox import ISOLATIONS, extract_code, run_code
from em_hf.metrics import _common, _script
from em_hf.utils.validation import check_choice, check_int, check_number

_DESCRIPTION = r"""
pass@k of generated programs (Chen et al., "Evaluating Large Language Models Trained on Code"):
for each problem, n candidate completions are generated and each is run against the problem's tests;
with c of them passing, the unbiased estimate of the chance that at least one of k candidates passes
is 1 - C(n - c, k) / C(n, k). The score is the mean over problems, for each requested k.

Each candidate is the last fenced python code block of the completion (`em_hf.eval.sandbox.extract_code`;
with `extract_code=False` the completion itself is the program), run by `em_hf.eval.sandbox.run_code`
after the usual LeetCode imports, then the tests, in a bubblewrap sandbox (no network, no host files,
an unprivileged uid, resource and wall-clock limits); it passes when the tests ran to their end with
every `assert EXPR == LITERAL` value right (checked outside the sandbox, so an early exit cannot
pass). A candidate without code, that does not compile, raises, exits early, fails an assertion or
runs out of time fails.
"""

_KWARGS_DESCRIPTION = r"""
Parameters:
    predictions (`list[list[str]]`):
        For each problem, its n candidate completions (n may differ between problems).
    references (`list[str]`):
        For each problem, its tests: Python source appended after the candidate's code, e.g.
        `"assert Solution().add(1, 2) == 3"` (the `test` field of em_hf's LeetCode items).
    k (`int` or `list[int]`, *optional*, defaults to `[1]`):
        The k of pass@k; each must be at most the number of candidates of every problem.
    timeout_s (`float`, *optional*, defaults to `10.0`):
        Wall-clock limit of one candidate's run, in seconds.
    num_workers (`int`, *optional*, defaults to the number of CPUs, at most 8):
        Candidates run at the same time (each in its own process).
    isolation (`str`, *optional*):
        `run_code`'s isolation: `"bwrap"` (the default; refused with an install hint where bubblewrap
        cannot run) or `"process"` (no isolation from your files and network: trusted code only).
    extract_code (`bool`, *optional*, defaults to `True`):
        Take the last fenced python block of each completion as the program; `False` runs each
        prediction as it is (predictions that are already code).
    return_per_item (`bool`, *optional*, defaults to `False`):
        Also return `"num_passed"` (passing candidates per problem) and `"statuses"` (the sandbox
        status of every candidate: `"passed"`, `"failed"`, `"timeout"` or `"error"`).

Returns:
    `dict`: `"pass@<k>"` (`float` in [0, 1]) for each k, and with `return_per_item=True`
    `"num_passed"` (`list[int]`) and `"statuses"` (`list[list[str]]`).

Examples:

    >>> import em_hf.metrics
    >>> metric = em_hf.metrics.load("code_pass_at_k")
    >>> good = "```python\ndef add(a, b):\n    return a + b\n```"
    >>> bad = "```python\ndef add(a, b):\n    return a - b\n```"
    >>> metric.compute(predictions=[[good, bad, bad]], references=["assert add(2, 3) == 5"], k=[1, 2])
    {'pass@1': 0.3333333333333333, 'pass@2': 0.6666666666666666}
"""

_CITATION = r"""
@article{chen2021codex,
  title={Evaluating Large Language Models Trained on Code},
  author={Chen, Mark and Tworek, Jerry and Jun, Heewoo and Yuan, Qiming and Pinto, Henrique Ponde de Oliveira
          and Kaplan, Jared and Edwards, Harri and Burda, Yuri and Joseph, Nicholas and Brockman, Greg
          and others},
  journal={arXiv preprint arXiv:2107.03374},
  year={2021}
}
"""


@_script.metric_card(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
class CodePassAtK(_script.CheckedMetric):
    FEATURES = datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
    )
    URLS = ("https://arxiv.org/abs/2107.03374",)

    def prepare_batch(self, predictions: list, references: list) -> tuple[list, list]:
        """Each prediction must be the LIST of candidates of its problem."""
        for index, candidates in enumerate(predictions):
            if isinstance(candidates, str):
                raise ValueError(
                    f"`predictions[{index}]` must be the list of candidate completions of problem "
                    f"{index}, got a string; wrap it: [completion]."
                )
        return predictions, references

    def _compute(
        self,
        predictions,
        references,
        k=(1,),
        timeout_s: float = 10.0,
        num_workers: int | None = None,
        extract_code: bool = True,
        return_per_item: bool = False,
        isolation: str | None = None,
    ):
        _common.check_not_empty(predictions)
        _common.check_same_length(predictions, references)
        for index, candidates in enumerate(predictions):
            if len(candidates) == 0:
                raise ValueError(f"`predictions[{index}]` is empty: give at least one candidate per problem.")
        ks = _common.check_k(k, [len(candidates) for candidates in predictions])
        check_number("timeout_s", timeout_s, low=0, low_open=True)
        workers = (
            min(8, os.cpu_count() or 1) if num_workers is None else check_int("num_workers", num_workers)
        )
        if not isinstance(extract_code, bool):
            raise ValueError(f"`extract_code` must be True or False, got {extract_code!r}.")
        if isolation is not None:
            check_choice("isolation", isolation, ISOLATIONS)

        jobs = [
            (i, tests, c)
            for i, (cands, tests) in enumerate(zip(predictions, references, strict=True))
            for c in cands
        ]

        def run(job: tuple[int, str, str]) -> str:
            _, tests, completion = job
            code = extract_code_from(completion) if extract_code else completion
            return run_code(code, tests, timeout_s=timeout_s, isolation=isolation).status

        with ThreadPoolExecutor(max_workers=workers) as pool:
            flat = list(pool.map(run, jobs))
        statuses: list[list[str]] = [[] for _ in predictions]
        for (index, _, _), status in zip(jobs, flat, strict=True):
            statuses[index].append(status)
        passed = [sum(status == "passed" for status in row) for row in statuses]
        result: dict[str, Any] = {}
        for value in ks:
            scores = [_common.pass_at_k(len(row), c, value) for row, c in zip(statuses, passed, strict=True)]
            result[f"pass@{value}"] = sum(scores) / len(scores)
        if return_per_item:
            result["num_passed"] = passed
            result["statuses"] = statuses
        return result


extract_code_from = extract_code  # the compute argument `extract_code` shadows the function's name
