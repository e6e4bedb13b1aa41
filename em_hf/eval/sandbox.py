"""Run model-written Python against a benchmark's tests in an isolated sandbox, with a verdict the
program cannot fake.

Isolation (``isolation="bwrap"``, the default): the program runs under bubblewrap in new user, mount,
PID, network, IPC and UTS namespaces, as an unprivileged uid, with a seccomp filter, on a file system
that holds only the interpreter (read-only) and a private size-capped tmpfs working folder; nothing of
the host's files, processes or network is reachable (details: :mod:`em_hf.eval._sandbox_bwrap`).
Resource limits hold for that uid: address space (``memory_mb``), CPU seconds, file size, processes
(``max_processes``), no core dumps; the wall-clock limit (``timeout_s``) is enforced by the parent,
which reads every byte from the program through pipes under that same deadline (there is no file the
program could replace) and then kills the sandbox, whose PID namespace takes every process with it.
Where bubblewrap is missing or cannot start, :func:`run_code` raises
:class:`~em_hf.eval._sandbox_bwrap.SandboxUnavailableError` saying how to install it. The caller may
opt into ``isolation="process"`` (a separate process with the same limits, protocol and pipes, in a
temporary folder, but with the caller's rights on files and network: only for trusted code); it warns
once.

Verdict (:mod:`em_hf.eval._sandbox_protocol`): the candidate's code runs first as a module named
``solution`` (its ``if __name__ == "__main__":`` block does not run), then the tests; ``assert EXPR ==
LITERAL`` tests are compared by the parent with literals that never enter the sandbox, and a pass
needs every such value right plus the harness's end record. Exiting early (``sys.exit``,
``os._exit``, ``SystemExit`` at import, ``atexit``, ``sys.excepthook``) fails.

The candidate is the LAST fenced ```python block of a completion (:func:`extract_code`), run after a
prelude of the standard-library imports LeetCode solutions assume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

from em_hf.eval import _sandbox_bwrap as bwrap
from em_hf.eval._sandbox_bwrap import SandboxUnavailableError
from em_hf.eval._sandbox_protocol import CHECK_NAME, HARNESS, prepare_tests, verdict
from em_hf.utils.validation import check_choice, check_int, check_number

__all__ = [
    "ISOLATIONS",
    "LEETCODE_PRELUDE",
    "CodeResult",
    "SandboxUnavailableError",
    "check_sandbox",
    "extract_code",
    "run_code",
    "set_default_isolation",
]

LEETCODE_PRELUDE = (
    "from typing import *\n"
    "from collections import *\n"
    "from functools import *\n"
    "from itertools import *\n"
    "from heapq import *\n"
    "from bisect import *\n"
    "from math import *\n"
    "import collections, functools, heapq, itertools, math, bisect, string, re\n"
)

STATUSES = ("passed", "failed", "timeout", "error")
ISOLATIONS = ("bwrap", "process")
MAX_TIMEOUT_S = 24 * 3600.0
_REPORT_LIMIT = 64 << 20  # bytes of result records; more is an attack on the parent's memory
_STDERR_TAIL = 8192
_SETUP_S = 30.0  # the most a sandbox may take to start, on top of the program's timeout
_EXIT_GRACE_S = 2.0  # how long pipes may stay open after the program's exit (leftover processes)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_state = {"isolation": "bwrap", "warned": False}
_state_lock = threading.Lock()


@dataclass(frozen=True)
class CodeResult:
    """Outcome of :func:`run_code`.

    Parameters:
        status (`str`):
            ``"passed"`` (the tests ran to their end and every checked value was right), ``"failed"``
            (a wrong value, an exception, an exit before the tests finished, a resource limit),
            ``"timeout"`` (wall-clock limit reached; the sandbox was killed) or ``"error"`` (nothing
            to run: no code, code that does not compile or is not valid text).
        detail (`str`, *optional*, defaults to `""`):
            Why: the failed test and its value, the exception, or the reason.
        seconds (`float`, *optional*, defaults to `0.0`):
            The wall time.

    Examples:
        >>> from em_hf.eval import run_code
        >>> result = run_code("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5", timeout_s=10)
        >>> result.passed, result.status
        (True, 'passed')
    """

    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def extract_code(completion: str) -> str | None:
    """The last fenced code block tagged ``python``/``py``/``python3`` (else the last untagged
    block; other languages are ignored); None when there is none. An unclosed final ```python
    fence (a completion cut off by the token limit) counts from the fence to the end."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    if python:
        return python[-1]
    untagged = [body for lang, body in blocks if lang == ""]
    if untagged:
        return untagged[-1]
    opened = completion.rfind("```python")
    if opened != -1 and completion.count("```", opened) == 1:
        return completion[opened + len("```python") :].lstrip("\n")
    return None


def set_default_isolation(isolation: str) -> None:
    """Set the isolation :func:`run_code` uses when its ``isolation`` argument is None (for the whole
    process: ``em-hf eval --unsafe-code-sandbox`` calls ``set_default_isolation("process")``).

    Parameters:
        isolation (`str`):
            ``"bwrap"`` (the default) or ``"process"`` (no isolation from the host's files and network:
            trusted code only).
    """
    with _state_lock:
        _state["isolation"] = check_choice("isolation", isolation, ISOLATIONS)


def check_sandbox() -> str:
    """Describe the bubblewrap sandbox this machine runs (interpreter, seccomp, uid); raises
    :class:`SandboxUnavailableError` with the fix when it cannot run. Checked once per process.

    Examples:
        >>> from em_hf.eval.sandbox import check_sandbox
        >>> "bubblewrap" in check_sandbox()
        True
    """
    _, python, _ = bwrap.probe()
    seccomp = (
        "a seccomp filter" if bwrap.seccomp_filter() is not None else "no seccomp filter (libseccomp missing)"
    )
    user = f"uid {bwrap.SANDBOX_UID}" if os.geteuid() == 0 else f"your uid {os.geteuid()}"
    return f"bubblewrap sandbox: {python}, {seccomp}, running as {user} outside the sandbox"


def _warn_process_isolation() -> None:
    with _state_lock:
        if _state["warned"]:
            return
        _state["warned"] = True
    warnings.warn(
        "em_hf sandbox: isolation='process' runs model-written code with your user's rights on files, "
        "processes and the network (only resource limits and a temporary folder apply); use it only "
        f"for code you trust. For isolation, {bwrap.INSTALL_HINT} and use isolation='bwrap'.",
        RuntimeWarning,
        stacklevel=3,
    )


def _check_arguments(
    code, tests, timeout_s, memory_mb, max_processes, max_file_mb, prelude, isolation
) -> str:
    if code is not None and not isinstance(code, str):
        raise TypeError(
            f"`code` must be a str of Python source or None, got {type(code).__name__}"
            + (" (decode it first: code.decode('utf-8'))." if isinstance(code, bytes | bytearray) else ".")
        )
    for name, value in (("tests", tests), ("prelude", prelude)):
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str of Python source, got {type(value).__name__}.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"`{name}` is not valid Unicode text ({error.reason} at {error.start})."
            ) from None
    check_number("timeout_s", timeout_s, low=0, low_open=True, high=MAX_TIMEOUT_S, hint=" (seconds)")
    check_int("memory_mb", memory_mb, minimum=64, hint=" (MiB)")
    check_int("max_processes", max_processes, minimum=1)
    check_int("max_file_mb", max_file_mb, minimum=1, hint=" (MiB)")
    if isolation is None:
        return _state["isolation"]
    return check_choice("isolation", isolation, ISOLATIONS)


def run_code(
    code: str | None,
    tests: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    prelude: str = LEETCODE_PRELUDE,
    isolation: str | None = None,
) -> CodeResult:
    """Run ``prelude + code``, then ``tests``, in the sandbox described in the module docstring.

    Parameters:
        code (`str` or `None`):
            The candidate program (e.g. :func:`extract_code` of a completion); `None`, blank or text
            that is not valid Unicode gives status ``"error"``.
        tests (`str`):
            Python run after the code (LeetCode items: ``assert`` statements on ``Solution()``);
            ``assert EXPR == LITERAL`` statements at the top level are checked outside the sandbox.
        timeout_s (`float`, *optional*, defaults to `10.0`):
            Wall-clock limit in seconds, in (0, 86400], counted from the start of the candidate's code
            (the sandbox's start-up may take up to 30 s more); the CPU limit is set just above it.
        memory_mb (`int`, *optional*, defaults to `1024`):
            Address-space limit of each process (``RLIMIT_AS``), in MiB (>= 64).
        max_processes (`int`, *optional*, defaults to `64`):
            Processes and threads the sandbox may hold (``RLIMIT_NPROC`` of its uid), >= 1.
        max_file_mb (`int`, *optional*, defaults to `16`):
            Largest file the program may write (``RLIMIT_FSIZE``), in MiB; the working folder holds at
            most four times that.
        prelude (`str`, *optional*, defaults to `LEETCODE_PRELUDE`):
            Source put before the code (the usual LeetCode imports).
        isolation (`str`, *optional*):
            ``"bwrap"`` or ``"process"`` (see the module docstring); None uses
            :func:`set_default_isolation`'s choice (``"bwrap"`` unless changed).

    Returns:
        :class:`CodeResult`

    Raises:
        SandboxUnavailableError: ``isolation="bwrap"`` where bubblewrap is missing or cannot start.

    Examples:
        >>> from em_hf.eval.sandbox import run_code
        >>> run_code("def add(a, b): return a + b", "assert add(2, 3) == 5").status
        'passed'
        >>> result = run_code("def add(a, b): return a - b", "assert add(2, 3) == 5")
        >>> result.status, result.detail
        ('failed', 'AssertionError: tests line 1: got -1, expected 5')
        >>> run_code("import sys\\nsys.exit(0)", "assert 1 == 2").status
        'failed'
    """
    mode = _check_arguments(code, tests, timeout_s, memory_mb, max_processes, max_file_mb, prelude, isolation)
    prepared = prepare_tests(tests)
    if code is None or not code.strip():
        return CodeResult("error", "no code to run (no python code block in the completion)")
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as error:
        return CodeResult("error", f"the code is not valid Unicode text ({error.reason} at {error.start})")
    if mode == "bwrap":
        bwrap.probe()  # raises SandboxUnavailableError with the fix
    else:
        _warn_process_isolation()
    nonce = secrets.token_hex(16)
    payload = {
        "code": f"{prelude}\n{code}\n",
        "tests": prepared.source,
        "nonce": nonce,
        "check_name": CHECK_NAME,
    }
    limits = (memory_mb << 20, int(timeout_s) + 2, max_processes, max_file_mb << 20)
    start = time.perf_counter()
    outcome = _execute(mode, json.dumps(payload).encode("ascii"), limits, timeout_s)
    seconds = time.perf_counter() - start
    lines = outcome.report.split(b"\n")[:-1]  # a last line without its newline was cut off
    found = verdict(lines, prepared, nonce)
    if outcome.overflow:
        return CodeResult("failed", "the program wrote more than 64 MiB to the result channel", seconds)
    if found is not None:
        return CodeResult(found[0], found[1], seconds)
    if outcome.timed_out:
        return CodeResult("timeout", f"killed after {timeout_s:g} s", seconds)
    return CodeResult("failed", _ended_early(outcome), seconds)


def _ended_early(outcome: _Outcome) -> str:
    code = outcome.returncode
    if code is not None and code < 0:
        how = f"killed by {signal.Signals(-code).name}"
    elif code is not None and code > 128 and code - 128 in signal.valid_signals():
        how = f"killed by {signal.Signals(code - 128).name}"  # bwrap reports a signal as 128 + number
    else:
        how = f"exit status {code}"
    text = outcome.stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = f": {lines[-1][-500:]}" if lines else ""
    return f"the program ended before the tests finished ({how}){last}"


@dataclass
class _Outcome:
    report: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool
    overflow: bool


def _command(mode: str, limits: tuple[int, ...], fds: dict[str, int], work: str | None):
    arguments = ["-c", HARNESS, *(str(value) for value in limits), str(fds["report"])]
    if mode == "process":
        return [sys.executable, "-I", "-B", *arguments], {"cwd": work, "env": _process_env(work)}
    tool, python, folders = bwrap.probe()
    command = bwrap.bwrap_command(
        tool, python, list(folders), fds.get("seccomp"), 4 * limits[3], info_fd=fds["info"]
    )
    return [*command, *arguments], {"cwd": "/", "env": {"PATH": "/usr/bin:/bin"}, **bwrap.spawn_kwargs()}


def _process_env(work: str | None) -> dict[str, str]:
    home = work or "/"
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


def _execute(mode: str, payload: bytes, limits: tuple[int, ...], timeout_s: float) -> _Outcome:
    """Start the sandbox, feed it ``payload``, read its pipes until it exits or the deadline, kill it.

    Pipes besides stdin/stdout/stderr: ``report`` (the verdict records), for bwrap ``info`` (bwrap's
    JSON with the host pid of the sandbox's init, waited for so that nothing of the sandbox is alive
    when this returns) and ``seccomp`` (the filter, read by bwrap)."""
    ours, theirs = {}, {}
    ours["report"], theirs["report"] = os.pipe()
    if mode == "bwrap":
        ours["info"], theirs["info"] = os.pipe()
        seccomp = bwrap.seccomp_filter()
        if seccomp is not None:
            theirs["seccomp"], seccomp_w = os.pipe()
            os.write(seccomp_w, seccomp)  # a few hundred bytes: fits the pipe's buffer
            os.close(seccomp_w)
    work = tempfile.mkdtemp(prefix="em_hf_sandbox_") if mode == "process" else None
    try:
        command, options = _command(mode, limits, theirs, work)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=tuple(theirs.values()),
                start_new_session=True,
                **options,
            )
        finally:
            for fd in theirs.values():
                os.close(fd)
        try:
            return _communicate(process, payload, ours, timeout_s)
        finally:
            _kill(process)
    finally:
        for fd in ours.values():
            os.close(fd)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _communicate(
    process: subprocess.Popen, payload: bytes, pipes: dict[str, int], timeout_s: float
) -> _Outcome:
    """Every pipe is non-blocking and watched with one selector, whose waits never pass the deadline.
    The loop ends when the process has exited (its pidfd turns readable), every pipe is at end of
    file (every process holding it is gone) and the sandbox's init has exited (its PID namespace is
    then empty); or at the deadline; or shortly after the exit when a leftover process lingers.

    The deadline is ``timeout_s`` after the harness's first record (written just before the
    candidate's code is compiled), so a slow sandbox start on a busy machine does not eat the
    program's time; the start itself may take up to ``_SETUP_S`` more."""
    pidfd = os.pidfd_open(process.pid)
    sources = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr"}
    sources |= {fd: name for name, fd in pipes.items()}
    data = {name: bytearray() for name in sources.values()}
    selector = selectors.DefaultSelector()
    stdin = process.stdin.fileno()
    for fd in (*sources, stdin):
        os.set_blocking(fd, False)
    for fd in (*sources, pidfd):
        selector.register(fd, selectors.EVENT_READ)
    selector.register(stdin, selectors.EVENT_WRITE)
    pending, timed_out, overflow, exited = memoryview(payload), False, False, False
    limit, init_fd, started = time.perf_counter() + timeout_s + _SETUP_S, None, False
    try:
        while not exited or len(selector.get_map()) > 0:
            left = limit - time.perf_counter()
            if left <= 0 and (exited or timed_out or overflow):
                break
            if left <= 0:  # the deadline: kill, then wait (briefly) for the sandbox to be gone
                timed_out = True
                _kill_group(process.pid)
                limit = time.perf_counter() + _EXIT_GRACE_S
                continue
            for key, _ in selector.select(left):
                fd = key.fd
                if fd in (pidfd, init_fd):
                    selector.unregister(fd)
                    if fd == pidfd:
                        exited = True
                        _kill_group(process.pid)  # what it left behind (process isolation) closes its pipes
                        limit = time.perf_counter() + _EXIT_GRACE_S
                elif fd == stdin:
                    try:
                        pending = pending[os.write(stdin, pending) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the program closed its stdin: its loss
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin)
                        process.stdin.close()
                else:
                    _drain(fd, data[sources[fd]], selector)
                    if sources[fd] == "info" and init_fd is None:
                        init_fd = _watch_init(data["info"], selector)
                    if sources[fd] == "info" and (init_fd is not None or len(data["info"]) > 65536):
                        del data["info"][:]  # bwrap's JSON is read; the rest is noise
                    if sources[fd] == "report" and not started:  # the program starts now
                        started = True
                        if not (exited or timed_out or overflow):
                            limit = time.perf_counter() + timeout_s
            if len(data["report"]) > _REPORT_LIMIT:
                del data["report"][:]
                if not overflow:
                    overflow = True
                    _kill_group(process.pid)
                    limit = time.perf_counter() + _EXIT_GRACE_S
            for name in ("stdout", "stderr"):
                del data[name][: max(0, len(data[name]) - _STDERR_TAIL)]
    finally:
        selector.close()
        for fd in (pidfd, init_fd):
            if fd is not None:
                os.close(fd)
        if not process.stdin.closed:
            process.stdin.close()
    return _Outcome(
        bytes(data["report"]), bytes(data["stderr"][-_STDERR_TAIL:]), process.poll(), timed_out, overflow
    )


def _watch_init(info: bytearray, selector: selectors.BaseSelector) -> int | None:
    """A pidfd on the sandbox's init, from bwrap's ``--info-fd`` JSON once it is complete."""
    try:
        pid = int(json.loads(info)["child-pid"])
        init_fd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError, RecursionError):
        return None
    selector.register(init_fd, selectors.EVENT_READ)
    return init_fd


def _drain(fd: int, into: bytearray, selector: selectors.BaseSelector, until_empty: bool = False) -> None:
    """Read what ``fd`` holds now (all of it with ``until_empty``); unregister it at end of file."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            selector.unregister(fd)
            return
        into += chunk
        if not until_empty or len(into) > _REPORT_LIMIT + (1 << 16):
            return


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process group (bwrap: the sandbox's PID namespace dies with it) and reap it."""
    _kill_group(process.pid)
    process.wait()
    _kill_group(process.pid)  # members the leader left behind (process isolation)
    for stream in (process.stdout, process.stderr):
        stream.close()
