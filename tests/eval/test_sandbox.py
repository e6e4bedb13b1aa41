"""The code sandbox: the last python block is run with the tests in a separate restricted process;
hostile programs end as "failed"/"timeout", never as a hang or a harness crash."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from em_hf.eval import extract_code, load_benchmark, run_code
from em_hf.eval.sandbox import sandbox_namespaces_available

SOLUTION = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n"
TESTS = "assert Solution().add(1, 2) == 3\nassert Solution().add(-1, 1) == 0\n"
MODES = [pytest.param(False, id="no-namespaces")]
if sandbox_namespaces_available():
    MODES.append(pytest.param(True, id="namespaces"))


@pytest.fixture(params=MODES)
def namespaces(request) -> bool:
    return request.param


def test_passing_and_failing_programs(namespaces):
    passed = run_code(SOLUTION, TESTS, namespaces=namespaces)
    assert passed.passed and passed.status == "passed"
    wrong = run_code(SOLUTION.replace("a + b", "a - b"), TESTS, namespaces=namespaces)
    assert not wrong.passed and wrong.status == "failed"
    assert "AssertionError" in wrong.detail


def test_syntax_error_and_missing_code_are_errors(namespaces):
    broken = run_code("def (:", TESTS, namespaces=namespaces)
    assert broken.status == "error" and "SyntaxError" in broken.detail
    assert run_code(None, TESTS).status == "error"
    assert run_code("   ", TESTS).status == "error"


def test_infinite_loop_times_out_quickly(namespaces):
    start = time.perf_counter()
    result = run_code("while True:\n    pass\n", "", timeout_s=1.0, namespaces=namespaces)
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < 10  # killed, not waited for


def test_memory_bomb_fails(namespaces):
    result = run_code("x = bytearray(8 * 1024**3)\n", "", memory_mb=256, namespaces=namespaces)
    assert result.status == "failed" and "MemoryError" in result.detail
    growing = run_code(
        "x = []\nwhile True:\n    x.append(' ' * 10**6)\n", "", memory_mb=256, namespaces=namespaces
    )
    assert growing.status == "failed"


def test_fork_bomb_and_subprocess_fail(namespaces):
    bomb = run_code("import os\nwhile True:\n    os.fork()\n", "", timeout_s=3.0, namespaces=namespaces)
    assert bomb.status in ("failed", "timeout")
    shell = run_code("import subprocess\nsubprocess.run(['true'])\n", "", namespaces=namespaces)
    assert shell.status == "failed" and "not allowed" in shell.detail


def test_socket_fails(namespaces):
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 9))\n"
    result = run_code(code, "", namespaces=namespaces)
    assert result.status == "failed" and "socket" in result.detail


def test_writes_outside_the_folder_fail_and_inside_work(namespaces, tmp_path):
    target = tmp_path / "escape.txt"
    result = run_code(f"open({str(target)!r}, 'w').write('x')\n", "", namespaces=namespaces)
    assert result.status == "failed" and "outside the sandbox" in result.detail
    assert not target.exists()
    escape_up = run_code("open('../escape.txt', 'w').write('x')\n", "", namespaces=namespaces)
    assert escape_up.status == "failed"
    inside = run_code("open('notes.txt', 'w').write('ok')\nassert open('notes.txt').read() == 'ok'\n", "")
    assert inside.passed


def test_environment_is_minimal_and_folder_is_removed(namespaces, monkeypatch):
    monkeypatch.setenv("EM_HF_TEST_SECRET", "hunter2")
    code = (
        "import os\n"
        "assert 'EM_HF_TEST_SECRET' not in os.environ, 'secret leaked'\n"
        "open('/dev/null')\n"
        "print(os.getcwd())\n"
        "assert os.path.basename(os.getcwd()) == 'work'\n"
    )
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("em_hf_sandbox_*"))
    assert run_code(code, "", namespaces=namespaces).passed
    after = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("em_hf_sandbox_*"))
    assert after <= before  # the temporary folder is gone


def test_argument_checks():
    with pytest.raises(ValueError, match="timeout_s"):
        run_code(SOLUTION, TESTS, timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_code(SOLUTION, TESTS, memory_mb=1)
    with pytest.raises(TypeError, match="tests"):
        run_code(SOLUTION, None)


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


def test_real_leetcode_item(benchmarks_dir):
    """A hand-written correct solution of the first LeetCode item passes its 100 tests; an off-by-one
    version fails them."""
    item = load_benchmark("leetcode", limit=1)[0]
    assert "minimumPushes" in item.question
    solution = (
        "class Solution:\n"
        "    def minimumPushes(self, word: str) -> int:\n"
        "        return sum(i // 8 + 1 for i in range(len(word)))\n"
    )
    completion = f"Here it is:\n```python\n{solution}```\n"
    assert run_code(extract_code(completion), item.tests).status == "passed"
    assert run_code(solution.replace("i // 8", "i // 9"), item.tests).status == "failed"
