"""Every ```python block of README.md and docs/*.md runs as written, each in a fresh process from an
empty temporary folder (what a user who copies it into a script does).

Tiny settings go in only where a block says so, with a comment at the end of the line where a call
ends::

    args = EntropyMinConfig.one_shot(output_dir="one-shot-em", max_steps=10)  # test-overrides: max_steps=1

Under test, the call that ends on that line gets those keyword arguments (replaced or added); the
user runs the block exactly as shown. Blocks that use vLLM must keep their work under
``if __name__ == "__main__":`` (vLLM starts worker processes) and are skipped when vLLM is absent.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"#\s*test-overrides:\s*(?P<overrides>.+?)\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
VLLM = re.compile(r"^\s*(from vllm\b|import vllm\b)|use_vllm\s*=\s*True|em_hf\.generation\.vllm", re.M)
TIMEOUT_S = 1200


# Blocks that are not yet whole programs, by the section that holds them, with what they lack. Each
# is skipped with this reason (visible in the test report) until the block runs as written.
FRAGMENTS: dict[str, str] = {}


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the first code line, 1-based
    code: str
    section: str = ""  # the heading above the block

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Snippet]:
    """The ```python blocks of a markdown file, with the line of their first code line."""
    blocks, lines, language, start, section = [], [], None, 0, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if language is None and line.startswith("## "):
            section = line[3:].strip()
        fence = FENCE.match(line.strip()) if line.lstrip().startswith("```") else None
        if fence and language is None:
            language, start, lines = fence.group(1) or "text", number + 1, []
        elif line.strip() == "```" and language is not None:
            if language == "python":
                blocks.append(Snippet(path, start, "\n".join(lines) + "\n", section))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def parse_overrides(text: str) -> dict[str, ast.expr]:
    """``key=value, key2=value2`` (Python keyword syntax) -> {key: expression}."""
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call) and not call.args, f"test-overrides must be key=value pairs: {text!r}"
    return {keyword.arg: keyword.value for keyword in call.keywords if keyword.arg}


def apply_overrides(code: str) -> str:
    """``code`` with each ``# test-overrides:`` line's keyword arguments put into the outermost call
    that ends on that line; unchanged when it has no marker."""
    markers = {
        number: parse_overrides(match.group("overrides"))
        for number, line in enumerate(code.splitlines(), start=1)
        if (match := MARKER.search(line))
    }
    if not markers:
        return code
    tree = ast.parse(code)
    calls: dict[int, ast.Call] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.end_lineno in markers:
            best = calls.get(node.end_lineno)
            if best is None or (node.lineno, node.col_offset) < (best.lineno, best.col_offset):
                calls[node.end_lineno] = node
    for number, overrides in markers.items():
        if number not in calls:
            raise ValueError(f"line {number}: `# test-overrides:` needs a call that ends on its line")
        call = calls[number]
        call.keywords = [k for k in call.keywords if k.arg not in overrides]
        call.keywords += [ast.keyword(arg=key, value=value) for key, value in overrides.items()]
    return ast.unparse(tree) + "\n"


SNIPPETS = [snippet for document in DOCUMENTS for snippet in python_blocks(document)]


def test_the_documents_have_python_snippets():
    assert len(SNIPPETS) >= 5, [s.name for s in SNIPPETS]


def test_overrides_replace_or_add_keywords_of_the_call_ending_on_the_marked_line():
    code = (
        "args = make(\n"
        "    steps=10,\n"
        "    name='x',\n"
        ")  # test-overrides: steps=1, tokens=[8]\n"
        "other = make(steps=10)\n"
    )
    result = apply_overrides(code)
    namespace: dict = {"make": dict}
    exec(result, namespace)
    assert namespace["args"] == {"steps": 1, "name": "x", "tokens": [8]}
    assert namespace["other"] == {"steps": 10}  # unmarked lines are left alone
    assert apply_overrides("x = 1\n") == "x = 1\n"
    with pytest.raises(ValueError, match="needs a call"):
        apply_overrides("x = 1  # test-overrides: steps=1\n")


def test_overrides_pick_the_outermost_call_of_the_line():
    result = apply_overrides("y = dict(a=int('3'))  # test-overrides: b=2\n")
    namespace: dict = {}
    exec(result, namespace)
    assert namespace["y"] == {"a": 3, "b": 2}


def test_vllm_snippets_keep_their_work_under_main():
    for snippet in SNIPPETS:
        if VLLM.search(snippet.code):
            assert 'if __name__ == "__main__":' in snippet.code, (
                f'{snippet.name}: a vLLM snippet must run under `if __name__ == "__main__":` (vLLM spawns '
                "worker processes that re-import the script)"
            )


@pytest.mark.slow  # most blocks load the real default model
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_snippet_runs_as_written(snippet: Snippet, tmp_path: Path):
    if snippet.section in FRAGMENTS:
        pytest.skip(f"{snippet.section}: {FRAGMENTS[snippet.section]}")
    if VLLM.search(snippet.code) and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed: make installs it (VLLM_SPEC); this snippet needs it")
    script = tmp_path / "snippet.py"
    script.write_text(apply_overrides(snippet.code), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{snippet.name} failed (exit {result.returncode}):\n--- script\n{script.read_text()}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )
