"""What runs inside the code sandbox, and how its result is read: a verdict the candidate cannot fake.

The tests are rewritten before they enter the sandbox. Every top-level ``assert EXPR == LITERAL``
(either side a Python literal, the form of LeetCode tests) becomes ``_em_hf_check(k, EXPR)``: the
program computes ``EXPR`` and reports its value, and the *parent* compares it with the literal, which
never enters the sandbox. A wrong program therefore cannot pass such a test by exiting early
(``sys.exit(0)``, ``os._exit(0)``, ``SystemExit`` at import, ``atexit`` handlers, an overridden
``sys.excepthook``), nor by returning an object whose ``__eq__`` is always true, nor by writing to the
result channel: the report must hold the right value. Other statements of the tests (assignments,
asserts of another form) run inside, after the candidate's code.

Protocol: the harness (:data:`HARNESS`) reads one JSON payload on stdin, then writes JSON lines on
the report descriptor: ``{"start": nonce}`` (the candidate's time starts), ``{"syntax": message}``
(the code does not compile), ``{"code_error": message}`` (the candidate's code raised,
``SystemExit`` included, before any test ran), ``{"k": index, "v": encoded value}`` (a checked
test), ``{"test_error": message}`` (a statement of the tests raised) and ``{"end": nonce}`` after the
last statement, followed by ``os._exit(0)`` (no ``atexit`` handler or finalizer of the candidate runs
after it). :func:`verdict` turns the lines into a status.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["HARNESS", "CheckedTests", "decode_value", "prepare_tests", "verdict"]

CHECK_NAME = "_em_hf_check"

# Run by the sandbox's interpreter as `python -I -B -c HARNESS MEM CPU NPROC FSIZE REPORT_FD`.
# Everything it needs is bound to local names before the candidate's code runs, so that code
# replacing os.write, json.dumps or builtins cannot change what the harness reports.
HARNESS = r"""
def _harness():
    import builtins, json, os, resource, sys
    mem, cpu, nproc, fsize, report_fd = (int(x) for x in sys.argv[1:6])
    for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NPROC, nproc)):
        resource.setrlimit(limit, (value, value))
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    payload = json.loads(b"".join(chunks))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    write, dumps, exit_now, type_ = os.write, json.dumps, os._exit, type
    nonce = payload["nonce"]

    def report(record):
        data = (dumps(record) + "\n").encode()
        while data:
            data = data[write(report_fd, data):]

    def encode(value, depth=0):
        kind = type_(value)
        if depth > 200:
            raise ValueError("nested more than 200 levels deep")
        if value is None or kind is bool or kind is str:
            return value
        if kind is int:
            return {"i": hex(value)}
        if kind is float:
            return {"f": value.hex()}
        if kind is complex:
            return {"c": [value.real.hex(), value.imag.hex()]}
        if kind is bytes:
            return {"b": value.hex()}
        if kind is list:
            return [encode(item, depth + 1) for item in value]
        if kind in (tuple, set, frozenset):
            tag = {tuple: "t", set: "s", frozenset: "fs"}[kind]
            return {tag: [encode(item, depth + 1) for item in value]}
        if kind is dict:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        raise TypeError(f"a {kind.__module__}.{kind.__qualname__} object")

    def check(index, value):
        try:
            report({"k": index, "v": encode(value)})
        except (TypeError, ValueError, RecursionError) as error:
            report({"k": index, "bad": f"the tested expression returned {error}; the tests compare plain "
                    "Python values (int, float, str, list, tuple, dict, set, bool, None)"})

    def describe(error):
        text = f"{type_(error).__name__}: {error}" if str(error) else type_(error).__name__
        return text[-2000:]

    report({"start": nonce})  # the program's time starts now
    try:
        code = compile(payload["code"], "solution.py", "exec")
    except (SyntaxError, ValueError, UnicodeError) as error:
        report({"syntax": describe(error)})
        exit_now(0)
    tests = compile(payload["tests"], "tests.py", "exec")
    scope = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, scope)
    except BaseException as error:
        report({"code_error": describe(error)})
        exit_now(0)
    scope[payload["check_name"]] = check
    try:
        exec(tests, scope)
    except BaseException as error:
        report({"test_error": describe(error)})
        exit_now(0)
    report({"end": nonce})
    exit_now(0)


_harness()
"""


@dataclass(frozen=True)
class CheckedTests:
    """The tests as sent into the sandbox, and what stays outside.

    Parameters:
        source (`str`):
            The rewritten tests (checked asserts replaced by ``_em_hf_check(k, EXPR)``, same line numbers).
        expected (`tuple`):
            The literal each checked value must equal, by index.
        lines (`tuple[int, ...]`):
            The line of each checked assert in the original tests.
    """

    source: str
    expected: tuple[Any, ...] = ()
    lines: tuple[int, ...] = ()


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _checked_operand(statement: ast.stmt) -> tuple[ast.expr, Any] | None:
    """``(EXPR, LITERAL)`` when ``statement`` is ``assert EXPR == LITERAL`` (or ``LITERAL == EXPR``)."""
    if not isinstance(statement, ast.Assert):
        return None
    test = statement.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return None
    left, right = test.left, test.comparators[0]
    (left_is_literal, left_value), (right_is_literal, right_value) = _literal(left), _literal(right)
    if right_is_literal and not left_is_literal:
        return left, right_value
    if left_is_literal and not right_is_literal:
        return right, left_value
    return None


@lru_cache(maxsize=256)
def prepare_tests(tests: str) -> CheckedTests:
    """Rewrite ``tests`` (see the module docstring); raises ``ValueError`` when they do not parse.
    Cached: an evaluation runs the same tests for every candidate of a problem."""
    try:
        module = ast.parse(tests, filename="tests.py")
    except SyntaxError as error:
        raise ValueError(f"`tests` is not valid Python: {error}") from error
    data = tests.encode("utf-8")
    line_starts = [0]
    for line in data.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(line: int, column: int) -> int:  # ast columns are UTF-8 byte offsets
        return line_starts[line - 1] + column

    replacements = []
    expected, lines = [], []
    for statement in module.body:
        found = _checked_operand(statement)
        if found is None:
            continue
        expression, value = found
        start = offset(statement.lineno, statement.col_offset)
        end = offset(statement.end_lineno, statement.end_col_offset)
        inner = data[
            offset(expression.lineno, expression.col_offset) : offset(
                expression.end_lineno, expression.end_col_offset
            )
        ]
        padding = b"\n" * (data[start:end].count(b"\n") - inner.count(b"\n"))  # keep line numbers
        call = CHECK_NAME.encode() + b"(%d, (" % len(expected) + inner + b")" + padding + b")"
        replacements.append((start, end, call))
        expected.append(value)
        lines.append(statement.lineno)
    for start, end, call in reversed(replacements):
        data = data[:start] + call + data[end:]
    return CheckedTests(data.decode("utf-8"), tuple(expected), tuple(lines))


_SCALARS = {"i": lambda x: int(x, 16), "f": float.fromhex, "b": bytes.fromhex}


def decode_value(encoded: Any) -> Any:
    """Inverse of the harness's ``encode`` (plain values only); raises ``ValueError`` on anything else."""
    if encoded is None or isinstance(encoded, bool | str):
        return encoded
    if isinstance(encoded, list):
        return [decode_value(item) for item in encoded]
    if not (isinstance(encoded, dict) and len(encoded) == 1):
        raise ValueError(f"not an encoded value: {encoded!r:.80}")
    ((tag, body),) = encoded.items()
    if tag in _SCALARS and isinstance(body, str):
        return _SCALARS[tag](body)
    if tag == "c" and isinstance(body, list) and len(body) == 2:
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag in ("t", "s", "fs") and isinstance(body, list):
        items = [decode_value(item) for item in body]
        return {"t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d" and isinstance(body, list):
        return {decode_value(k): decode_value(v) for k, v in body}
    raise ValueError(f"not an encoded value: {encoded!r:.80}")


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long for str()
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= 200 else text[:200] + "..."


def _same(got: Any, expected: Any) -> bool:
    """``got == expected`` as the original assert computes it for plain values (a comparison that
    raises, e.g. on huge ints, counts as not equal)."""
    try:
        return bool(got == expected)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False


def verdict(lines: list[bytes], tests: CheckedTests, nonce: str) -> tuple[str, str] | None:
    """``(status, detail)`` from the report lines, or None when they hold no verdict (the program
    ended, or was stopped, before the tests finished: the caller decides between timeout and failure).

    ``passed`` needs every checked value, in order, equal to its literal, and the harness's end record
    (with this run's ``nonce``) as the last line."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return "failed", "the program wrote to the sandbox's result channel"
        if not isinstance(record, dict) or len(record) == 0:
            return "failed", "the program wrote to the sandbox's result channel"
        records.append(record)
    if records and records[0] == {"start": nonce}:
        records = records[1:]
    received = 0
    for position, record in enumerate(records):
        if "syntax" in record:
            return "error", str(record["syntax"])
        if "code_error" in record:
            return "failed", f"{record['code_error']} (raised while the code ran, before the tests)"
        if "test_error" in record:
            return "failed", str(record["test_error"])
        if "k" in record:
            if record["k"] != received or received >= len(tests.expected):
                return "failed", "the program wrote to the sandbox's result channel"
            line = tests.lines[received]
            if "bad" in record:
                return "failed", f"AssertionError: tests line {line}: {record['bad']}"
            try:
                got = decode_value(record.get("v"))
            except (ValueError, TypeError, OverflowError, RecursionError):
                return "failed", "the program wrote to the sandbox's result channel"
            expected = tests.expected[received]
            if not _same(got, expected):
                return (
                    "failed",
                    f"AssertionError: tests line {line}: got {_short(got)}, expected {_short(expected)}",
                )
            received += 1
        elif "end" in record:
            if record["end"] != nonce or position != len(records) - 1:
                return "failed", "the program wrote to the sandbox's result channel"
            if received != len(tests.expected):
                return "failed", "the program wrote to the sandbox's result channel"
            return "passed", ""
        else:
            return "failed", "the program wrote to the sandbox's result channel"
    return None
