"""The code sandbox's contract: statuses, the verdict protocol, argument checks, the refusal where
bubblewrap cannot run, and the opt-in process isolation. Hostile programs: test_sandbox_hostile.py."""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

import pytest

from em_hf.eval import _sandbox_bwrap, extract_code, load_benchmark, run_code
from em_hf.eval import sandbox as sandbox_module
from em_hf.eval._sandbox_protocol import decode_value, prepare_tests
from em_hf.eval.sandbox import SandboxUnavailableError, check_sandbox, set_default_isolation

SOLUTION = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n"
TESTS = "assert Solution().add(1, 2) == 3\nassert Solution().add(-1, 1) == 0\n"


def _bwrap_reason() -> str | None:
    try:
        check_sandbox()
    except SandboxUnavailableError as error:
        return str(error)
    return None


BWRAP_MISSING = _bwrap_reason()
needs_bwrap = pytest.mark.skipif(
    BWRAP_MISSING is not None, reason=f"bubblewrap cannot run here: {BWRAP_MISSING}"
)


@pytest.fixture(params=[pytest.param("bwrap", marks=needs_bwrap), "process"])
def isolation(request) -> str:
    """Both isolations share the harness, the verdict protocol and the pipes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield request.param


def test_passing_and_failing_programs(isolation):
    passed = run_code(SOLUTION, TESTS, isolation=isolation)
    assert passed.passed and passed.status == "passed", passed
    wrong = run_code(SOLUTION.replace("a + b", "a - b"), TESTS, isolation=isolation)
    assert wrong.status == "failed" and wrong.detail == "AssertionError: tests line 1: got -1, expected 3"


def test_syntax_error_and_missing_code_are_errors(isolation):
    broken = run_code("def (:", TESTS, isolation=isolation)
    assert broken.status == "error" and "SyntaxError" in broken.detail
    assert run_code(None, TESTS).status == "error"
    assert run_code("   ", TESTS).status == "error"
    nul = run_code("x = 1\0", TESTS, isolation=isolation)
    assert nul.status == "error" and "null" in nul.detail


def test_exceptions_in_code_and_tests_fail_with_their_message(isolation):
    at_import = run_code("raise KeyError('boom')", TESTS, isolation=isolation)
    assert at_import.status == "failed" and at_import.detail.startswith("KeyError: 'boom'")
    assert "before the tests" in at_import.detail
    in_test = run_code("def f():\n    return 1 // 0\n", "assert f() == 1", isolation=isolation)
    assert in_test.status == "failed" and in_test.detail.startswith("ZeroDivisionError")
    plain_assert = run_code("x = 3", "assert x > 5, 'too small'", isolation=isolation)
    assert plain_assert.status == "failed" and plain_assert.detail == "AssertionError: too small"


def test_tests_with_state_and_in_process_asserts(isolation):
    """LeetCode's layout: assignments between asserts, keyword inputs, and asserts of other forms."""
    tests = (
        "s = Solution()\n"
        'test_input = {"a": 2, "b": 5}\n'
        "assert s.add(**test_input) == 7\n"
        "for a, b in [(1, 1), (2, 3)]:\n"
        "    assert s.add(a, b) == a + b\n"
        "assert isinstance(s.add(1, 1), int)\n"
        "assert (1, [2.5, None], {'k': {3}}) == s.echo((1, [2.5, None], {'k': {3}}))\n"
    )
    code = SOLUTION + "    def echo(self, x):\n        return x\n"
    assert run_code(code, tests, isolation=isolation).passed
    wrong = code.replace("return x", "return (1, [2.5, None], {'k': {4}})")
    result = run_code(wrong, tests, isolation=isolation)
    assert result.status == "failed" and "tests line 7" in result.detail


def test_prepare_tests_keeps_line_numbers_and_literals_outside():
    tests = "x = 1\nassert f(x,\n         2) == [\n  1, 2]\n"
    tests += "assert 'é' == g()  # literal first\nassert f(1) == f(2)\n"
    prepared = prepare_tests(tests)
    assert prepared.expected == ([1, 2], "é") and prepared.lines == (2, 5)
    ast.parse(prepared.source)
    assert prepared.source.count("\n") == tests.count("\n")
    assert "[\n  1, 2]" not in prepared.source and "'é'" not in prepared.source  # the literals stay outside
    assert "assert f(1) == f(2)" in prepared.source  # not a literal: runs inside
    with pytest.raises(ValueError, match="`tests` is not valid Python"):
        prepare_tests("assert (")


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(10**5000), 1.5, float("inf"), float("-inf"), 1 + 2j, "é\U0001f600", b"\x00\xff",
     [1, (2, 3)], {1, 2}, frozenset({"a"}), {"k": [1, {"n": None}]}, ()],
    ids=lambda value: type(value).__name__,
)  # fmt: skip
def test_value_encoding_round_trips(value):
    """The harness's encoder (run here in-process from its source) and the parent's decoder agree."""
    namespace: dict = {}
    source = sandbox_module.HARNESS
    encoder = source[source.index("    def encode(") : source.index("    def check(")]
    exec("def make(type_=type):\n" + encoder + "    return encode\n", namespace)
    assert decode_value(namespace["make"]()(value)) == value


def test_argument_checks():
    """The issue's argument reproductions: each is an early, named error (or an `error` status)."""
    with pytest.raises(ValueError, match="timeout_s"):
        run_code(SOLUTION, TESTS, timeout_s=0)
    with pytest.raises(ValueError, match="timeout_s"):
        run_code(SOLUTION, TESTS, timeout_s=float("inf"))
    with pytest.raises(ValueError, match="timeout_s"):
        run_code(SOLUTION, TESTS, timeout_s=float("nan"))
    with pytest.raises(ValueError, match="memory_mb"):
        run_code(SOLUTION, TESTS, memory_mb=1)
    with pytest.raises(ValueError, match="max_processes"):
        run_code(SOLUTION, TESTS, max_processes=True)
    with pytest.raises(ValueError, match="max_file_mb"):
        run_code(SOLUTION, TESTS, max_file_mb=0)
    with pytest.raises(TypeError, match=r"`code` must be a str.*decode it first"):
        run_code(b"def f(): pass", TESTS)
    with pytest.raises(TypeError, match="tests"):
        run_code(SOLUTION, None)
    with pytest.raises(ValueError, match="`tests` is not valid Unicode"):
        run_code(SOLUTION, "assert '\ud800' == 1")
    with pytest.raises(ValueError, match="isolation"):
        run_code(SOLUTION, TESTS, isolation="none")
    surrogate = run_code("x = '\ud800'", TESTS)
    assert surrogate.status == "error" and "not valid Unicode" in surrogate.detail


def test_refuses_without_bubblewrap_and_process_isolation_warns_once(monkeypatch, recwarn):
    """No silent downgrade: without bwrap run_code raises with the install command; the weaker
    isolation runs only when asked for, with one warning."""
    monkeypatch.setenv("PATH", "/nonexistent")
    _sandbox_bwrap.probe.cache_clear()
    monkeypatch.setitem(sandbox_module._state, "warned", False)
    try:
        with pytest.raises(SandboxUnavailableError, match=r"apt-get install bubblewrap.*isolation='process'"):
            run_code(SOLUTION, TESTS)
        with pytest.raises(SandboxUnavailableError, match="bwrap"):
            check_sandbox()
        assert run_code(SOLUTION, TESTS, isolation="process").passed
        assert run_code(SOLUTION, TESTS, isolation="process").passed
        messages = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "your user's rights" in messages[0]
        set_default_isolation("process")
        assert run_code(SOLUTION, TESTS).passed
        with pytest.raises(ValueError, match="isolation"):
            set_default_isolation("off")
    finally:
        set_default_isolation("bwrap")
        _sandbox_bwrap.probe.cache_clear()


@needs_bwrap
def test_check_sandbox_describes_it():
    description = check_sandbox()
    assert description.startswith("bubblewrap sandbox: /")
    assert "seccomp" in description


def test_environment_is_minimal_and_no_folder_survives(isolation, monkeypatch):
    monkeypatch.setenv("EM_HF_TEST_SECRET", "hunter2")
    code = (
        "import os\n"
        "def probe():\n"
        "    open('notes.txt', 'w').write('ok')\n"
        "    secret = 'EM_HF_TEST_SECRET' in os.environ\n"
        "    return (secret, open('notes.txt').read(), os.path.exists('/dev/null'))\n"
    )
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("em_hf_sandbox_*"))
    result = run_code(code, "assert probe() == (False, 'ok', True)", isolation=isolation)
    assert result.passed, result
    after = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("em_hf_sandbox_*"))
    assert after <= before  # the temporary folder (process isolation) is gone


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("text\n```python\nx = 1\n```\nmore\n```python\nx = 2\n```\n", "x = 2\n"),
        ("```py\nx = 3\n```", "x = 3\n"),
        ("```\nx = 4\n```\n```bash\nls\n```", "x = 4\n"),
        ("```cpp\nint x;\n```", None),
        ("no code", None),
        ("```python\nx = 5\n", "x = 5\n"),  # cut off by the token limit
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


@needs_bwrap
def test_real_leetcode_item(benchmarks_dir):
    """A hand-written correct solution of the first LeetCode item passes its 100 tests (all checked
    outside the sandbox); an off-by-one version fails them."""
    item = load_benchmark("leetcode", limit=1)[0]
    assert "minimumPushes" in item.question
    assert len(prepare_tests(item.tests).expected) == item.tests.count("assert ")
    solution = (
        "class Solution:\n"
        "    def minimumPushes(self, word: str) -> int:\n"
        "        return sum(i // 8 + 1 for i in range(len(word)))\n"
    )
    completion = f"Here it is:\n```python\n{solution}```\n"
    assert run_code(extract_code(completion), item.tests).status == "passed"
    wrong = run_code(solution.replace("i // 8", "i // 9"), item.tests)
    assert wrong.status == "failed" and "expected" in wrong.detail


def test_cli_refuses_code_benchmarks_without_bubblewrap_before_loading_the_model(
    benchmarks_dir, tmp_path, monkeypatch, capsys
):
    """`em-hf eval` on LeetCode checks the sandbox first and exits 2 with the install hint;
    `--unsafe-code-sandbox` switches run_code to process isolation."""
    import argparse

    from em_hf.cli import eval as eval_cli
    from em_hf.cli import main

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the sandbox check")

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("em_hf.models.load_model", load_model)
    _sandbox_bwrap.probe.cache_clear()
    argv = ["eval", "--benchmark", "leetcode", "--limit", "1", "--methods", "greedy", "--out", str(tmp_path)]
    try:
        assert main(argv) == 2
        assert "apt-get install bubblewrap" in capsys.readouterr().err
        parser = argparse.ArgumentParser()
        eval_cli.add_arguments(parser)
        args = parser.parse_args(["--benchmark", "leetcode", "--out", str(tmp_path), "--unsafe-code-sandbox"])
        assert eval_cli._code_sandbox_ready(args, {"leetcode": []})
        assert sandbox_module._state["isolation"] == "process"
    finally:
        set_default_isolation("bwrap")
        _sandbox_bwrap.probe.cache_clear()


@needs_bwrap
def test_concurrent_runs_keep_their_own_results():
    """code_pass_at_k runs candidates from a thread pool: each run's pipes, verdict and limits are
    its own (a fork bomb next to correct programs does not fail them)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(SOLUTION, "passed"), (SOLUTION.replace("a + b", "a * b"), "failed")] * 3
    jobs.append(("import os\nwhile True:\n    os.fork()\n", "failed"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda job: run_code(job[0], TESTS, timeout_s=5).status, jobs))
    assert statuses[:-1] == [expected for _, expected in jobs[:-1]]
    assert statuses[-1] in ("failed", "timeout")
