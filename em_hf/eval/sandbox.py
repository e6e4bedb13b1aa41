"""Run model-written Python against a benchmark's tests in a separate, restricted process.

Layers (each one alone stops the common failure; together they make a hang or a harness crash
impossible for the cases the tests cover: infinite loop, fork bomb, memory bomb, socket, writes
outside the working folder):

1. A separate process in its own session (process group), started with ``python -I -B`` (no user
   site, no ``PYTHON*`` variables, no bytecode files), a minimal environment (``PATH``, ``LANG``,
   ``HOME``/``TMPDIR`` pointing into the sandbox: none of the user's variables, so no secrets), and a
   fresh temporary working folder that is removed afterwards.
2. Resource limits set in the child before the candidate runs: address space (``RLIMIT_AS``,
   ``memory_mb``), CPU seconds, file size, no core dumps, and a process count (``RLIMIT_NPROC``).
3. A CPython audit hook (cannot be removed from Python code) that denies process creation
   (``os.fork``, ``subprocess``, ``os.system``/``exec``/``spawn``), sockets, ``ctypes`` and any
   write, rename or deletion outside the working folder.
4. Where unprivileged user namespaces work (checked once with ``unshare``), the child runs in new
   user, network and PID namespaces: no network interface at all, and the kernel kills every
   process of the namespace when it ends.
5. The wall-clock limit is enforced by the parent: on expiry the whole process group is killed
   with SIGKILL (repeatedly, until it is empty).

The candidate is the LAST fenced ```python block of a completion (:func:`extract_code`), run with a
prelude of the standard-library imports LeetCode solutions assume, followed by the item's tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["LEETCODE_PRELUDE", "CodeResult", "extract_code", "run_code", "sandbox_namespaces_available"]

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

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)

# The child's guard: limits, then the audit hook, then the candidate. Arguments: memory bytes, CPU
# seconds, max processes, max file bytes; the sandbox folder is the working directory.
_HARNESS = r"""
import os, resource, sys
_mem, _cpu, _nproc, _fsize = (int(x) for x in sys.argv[1:5])
for _limit, _value in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, _cpu),
                       (resource.RLIMIT_FSIZE, _fsize), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, _nproc)):
    try:
        resource.setrlimit(_limit, (_value, _value))
    except (ValueError, OSError):
        pass
def _install(root):
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _DENIED = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
               "os.killpg", "subprocess.Popen", "socket.", "ctypes.", "pty.spawn", "os.startfile")
    _PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                    "os.symlink": (0, 1), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
                    "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.chdir": (0,)}

    def _inside(path):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        full = os.path.realpath(os.fspath(path))
        return full == root or full.startswith(root + os.sep)

    def _guard(event, args):
        if event.startswith(_DENIED):
            raise PermissionError(f"em_hf sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags & _WRITE)
            if writing and path is not None and not _inside(path):
                raise PermissionError(f"em_hf sandbox: writing {path!r} outside the sandbox folder")
        elif event in _PATH_EVENTS:
            for index in _PATH_EVENTS[event]:
                if index < len(args) and args[index] is not None and not _inside(args[index]):
                    raise PermissionError(f"em_hf sandbox: {event} on {args[index]!r} outside the folder")

    sys.addaudithook(_guard)


_install(os.path.realpath(os.getcwd()))
del _install
with open("program.py", encoding="utf-8") as _file:
    _source = _file.read()
try:
    _compiled = compile(_source, "program.py", "exec")
except SyntaxError as _error:
    sys.stderr.write(f"SyntaxError: {_error}\n")
    sys.exit(3)
exec(_compiled, {"__name__": "__main__", "__builtins__": __builtins__})
"""
_SYNTAX_ERROR_EXIT = 3


@dataclass(frozen=True)
class CodeResult:
    """Outcome of :func:`run_code`.

    Parameters:
        status (`str`):
            ``"passed"`` (exit 0), ``"failed"`` (the program ran and ended with an error: a failed
            assertion, an exception, a denied operation, MemoryError, killed by a resource limit),
            ``"timeout"`` (wall-clock limit reached; the process group was killed) or ``"error"``
            (nothing to run: no code, or code that does not compile).
        detail (`str`, *optional*, defaults to `""`):
            The last line of the program's stderr, or the reason.
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


@lru_cache(maxsize=1)
def sandbox_namespaces_available() -> bool:
    """Whether ``unshare`` can create user, network and PID namespaces here (checked once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run(
            [*_unshare_prefix(unshare), "true"], capture_output=True, timeout=10, env=_minimal_env("/")
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _unshare_prefix(unshare: str) -> list[str]:
    return [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]


def _minimal_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group until it is empty (a fork bomb may add members while we kill).

    The group leader must already be reaped (or never have been ours): a zombie leader keeps the
    group "alive" for ``killpg``."""
    for _ in range(200):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)


def _last_line(path: Path) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_code(
    code: str | None,
    tests: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    prelude: str = LEETCODE_PRELUDE,
    namespaces: bool | None = None,
) -> CodeResult:
    """Run ``prelude + code + tests`` in the sandbox described in the module docstring.

    Parameters:
        code (`str` or `None`):
            The candidate program (e.g. :func:`extract_code` of a completion); `None` or blank gives
            status ``"error"``.
        tests (`str`):
            Python appended after the code (LeetCode items: ``assert`` statements on ``Solution()``); the
            run passes when the program exits with status 0.
        timeout_s (`float`, *optional*, defaults to `10.0`):
            Wall-clock limit in seconds (> 0); the CPU limit is set just above it.
        memory_mb (`int`, *optional*, defaults to `1024`):
            Address-space limit of the child (``RLIMIT_AS``), in MiB (>= 64).
        max_processes (`int`, *optional*, defaults to `64`):
            ``RLIMIT_NPROC`` of the child (a second line behind the fork ban).
        max_file_mb (`int`, *optional*, defaults to `16`):
            Largest file the child may write (``RLIMIT_FSIZE``), in MiB.
        prelude (`str`, *optional*, defaults to `LEETCODE_PRELUDE`):
            Source put before the code (the usual LeetCode imports).
        namespaces (`bool`, *optional*):
            Use ``unshare`` user/net/PID namespaces; `None` uses them when available.

    Returns:
        :class:`CodeResult`

    Examples:
        >>> from em_hf.eval.sandbox import run_code
        >>> run_code("def add(a, b): return a + b", "assert add(2, 3) == 5").status
        'passed'
        >>> result = run_code("def add(a, b): return a - b", "assert add(2, 3) == 5")
        >>> result.status, result.detail
        ('failed', 'AssertionError')
    """
    if not isinstance(tests, str):
        raise TypeError(f"`tests` must be a string of Python source, got {type(tests).__name__}.")
    if not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise ValueError(f"`timeout_s` must be a number of seconds > 0, got {timeout_s!r}.")
    if not (isinstance(memory_mb, int) and memory_mb >= 64):
        raise ValueError(f"`memory_mb` must be an integer >= 64 (MiB), got {memory_mb!r}.")
    if not (isinstance(max_processes, int) and max_processes >= 1):
        raise ValueError(f"`max_processes` must be an integer >= 1, got {max_processes!r}.")
    if code is None or not code.strip():
        return CodeResult("error", "no code to run (no python code block in the completion)")
    use_namespaces = sandbox_namespaces_available() if namespaces is None else namespaces
    if use_namespaces and shutil.which("unshare") is None:
        raise ValueError("`namespaces=True` needs the `unshare` command; pass namespaces=None or False.")
    root = Path(tempfile.mkdtemp(prefix="em_hf_sandbox_"))
    work = root / "work"
    work.mkdir()
    try:
        (root / "harness.py").write_text(_HARNESS, encoding="utf-8")
        (work / "program.py").write_text(f"{prelude}\n{code}\n\n{tests}\n", encoding="utf-8")
        command = [
            sys.executable,
            "-I",
            "-B",
            str(root / "harness.py"),
            str(memory_mb * 2**20),
            str(int(timeout_s) + 2),
            str(max_processes),
            str(max_file_mb * 2**20),
        ]
        if use_namespaces:
            command = [*_unshare_prefix(shutil.which("unshare") or "unshare"), *command]
        start = time.perf_counter()
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            process = subprocess.Popen(
                command,
                cwd=work,
                env=_minimal_env(str(work)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return CodeResult("timeout", f"killed after {timeout_s:g} s", time.perf_counter() - start)
            finally:
                _kill_group(process.pid)  # members left behind (the leader is reaped by now)
        seconds = time.perf_counter() - start
        detail = _last_line(root / "stderr")
        if returncode == 0:
            return CodeResult("passed", "", seconds)
        if returncode == _SYNTAX_ERROR_EXIT and detail.startswith("SyntaxError"):
            return CodeResult("error", detail, seconds)
        if returncode < 0:
            detail = detail or f"killed by signal {signal.Signals(-returncode).name}"
        return CodeResult("failed", detail or f"exit status {returncode}", seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
