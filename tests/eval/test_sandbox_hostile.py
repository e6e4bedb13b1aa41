"""Hostile programs against the code sandbox: file system, processes, network, resources, timing and
grading. Every test checks the host (markers, victims, listeners, leftover processes), not only the
status: zero escapes, zero false passes, no hang. Includes every reproduction of the sandbox audit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest

from em_hf.eval import _sandbox_bwrap
from em_hf.eval.sandbox import SandboxUnavailableError, check_sandbox, run_code

try:
    check_sandbox()
    MISSING = None
except SandboxUnavailableError as error:
    MISSING = str(error)
needs_bwrap = pytest.mark.skipif(MISSING is not None, reason=f"bubblewrap cannot run here: {MISSING}")
AS_ROOT = os.geteuid() == 0
HANG_BOUND_S = 30.0  # a call that takes longer than its timeout plus this has hung

WRONG = "class Solution:\n    def add(self, a, b):\n        return a - b\n"
RIGHT = WRONG.replace("a - b", "a + b")
TESTS = "assert Solution().add(2, 3) == 5\nassert Solution().add(-1, 1) == 0\n"


def run(code: str, tests: str = TESTS, isolation: str = "bwrap", **kwargs):
    """run_code, checked for a hang and for sandbox processes left on the host."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_code(code, tests, isolation=isolation, **kwargs)
    assert time.perf_counter() - start < kwargs.get("timeout_s", 10.0) + HANG_BOUND_S, "run_code hung"
    if isolation == "bwrap" and AS_ROOT:
        assert _sandbox_processes() == [], "a sandbox process survived the run"
    return result


def _sandbox_processes(exclude: tuple[int, ...] = ()) -> list[int]:
    """Live processes of the sandbox uid on the host (bwrap's exited helpers may linger as zombies
    until the host's init reaps them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        running = not fields.get("State", "").strip().startswith(("Z", "X"))  # zombies run nothing
        if running and str(_sandbox_bwrap.SANDBOX_UID) in fields.get("Uid", "").split():
            found.append(int(entry.name))
    return found


@pytest.fixture
def host_dir():
    """A host folder anyone may write (mode 0777 under /tmp): if the sandbox could see it, it could
    write there, so a missing marker means isolation, not permissions."""
    folder = Path(tempfile.mkdtemp(prefix="em_hf_hostile_", dir="/tmp"))
    folder.chmod(0o777)
    victim = folder / "victim"
    victim.write_text("intact")
    victim.chmod(0o666)
    (folder / "secret").write_text("hunter2")
    (folder / "secret").chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ---- file system ----------------------------------------------------------------------------------
# Each attack is the body of `attack(DIR)`: create DIR/pwned. It must work on the sandbox's own folder
# (so the attack really ran) and leave no marker in the host folder.
WRITES = {
    "dir_fd": "d = os.open(DIR, os.O_RDONLY)\n"
    "os.write(os.open('pwned', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d), b'x')",
    "opener": "open(DIR + '/pwned', 'w', opener=lambda p, f: os.open(p, f, 0o644)).write('x')",
    "mkfifo": "os.mkfifo(DIR + '/pwned')",
    "mknod": "os.mknod(DIR + '/pwned')",
    "symlink": "os.symlink('/etc/passwd', DIR + '/pwned')",
    "proc_root": "open('/proc/1/root' + DIR + '/pwned', 'w').write('x')",
    "shell": "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo x > ' + DIR + '/pwned'], check=True)",
    "fork_exec": "import _posixsubprocess\n"
    "pid = _posixsubprocess.fork_exec([b'/bin/sh', b'-c', ('echo x > ' + DIR + '/pwned').encode()],"
    " [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1, *os.pipe(), False, False, -1, None, None,"
    " None, -1, None, False)\nassert os.waitpid(pid, 0)[1] == 0",
    "ctypes_system": "import ctypes\n"
    "assert ctypes.CDLL(None).system(('touch ' + DIR + '/pwned').encode()) == 0",
    "hook_disabled": "os.path.realpath = lambda p, **k: os.getcwd()\nopen(DIR + '/pwned', 'w').write('x')",
}
# Each damage is the body of `damage(DIR)` on DIR/victim: it must work on the sandbox's own copy.
DAMAGE = {
    "remove_dir_fd": "os.remove('victim', dir_fd=os.open(DIR, os.O_RDONLY))",
    "chmod_dir_fd": "os.chmod('victim', 0o777, dir_fd=os.open(DIR, os.O_RDONLY))",
    "utime_dir_fd": "os.utime('victim', (0, 0), dir_fd=os.open(DIR, os.O_RDONLY))",
    "truncate": "os.truncate(DIR + '/victim', 0)",
    "rename": "os.rename(DIR + '/victim', DIR + '/moved')",
    "setxattr": "os.setxattr(DIR + '/victim', 'user.pwned', b'x')",
}


def _attack_program(name: str, body: str, host: Path) -> tuple[str, str]:
    """A program defining ``name(DIR)`` from ``body`` and ``attempt(DIR)`` (True, or the exception's
    name); the tests run it on the sandbox's folder (must work), then on the host folder."""
    code = f"import os\ndef {name}(DIR):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    code += (
        "def attempt(DIR):\n"
        "    try:\n"
        f"        {name}(DIR)\n"
        "        return True\n"
        "    except Exception as error:\n"
        "        return type(error).__name__\n"
    )
    tests = f"assert attempt('/sandbox') == True\nhost_result = attempt({str(host)!r})\n"
    return code, tests


@needs_bwrap
@pytest.mark.parametrize("attack", list(WRITES))
def test_no_write_outside_the_sandbox(attack, host_dir):
    code, tests = _attack_program("attack", WRITES[attack], host_dir)
    result = run(code, tests + "assert os.path.lexists('/sandbox/pwned') == True\n")
    assert result.passed, f"the {attack} attack did not even work inside the sandbox: {result.detail}"
    assert not os.path.lexists(host_dir / "pwned"), f"{attack} escaped"


@needs_bwrap
@pytest.mark.parametrize("attack", list(DAMAGE))
def test_host_files_are_untouched(attack, host_dir):
    victim = host_dir / "victim"
    before = victim.stat()
    code, tests = _attack_program("damage", DAMAGE[attack], host_dir)
    code = "open('/sandbox/victim', 'w').write('intact')\n" + code
    result = run(code, tests)
    assert result.passed, f"the {attack} damage did not even work inside the sandbox: {result.detail}"
    after = victim.stat()
    assert victim.read_text() == "intact" and not (host_dir / "moved").exists()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.listxattr(victim) == []


@needs_bwrap
def test_nothing_of_the_host_is_readable(host_dir, monkeypatch, benchmarks_dir):
    """Secrets: a world-readable host file, the benchmark answers, the repository, the host's /etc,
    homes, the parent's environment through /proc: none is visible."""
    monkeypatch.setenv("EM_HF_HOSTILE_SECRET", "hunter2")
    paths = [str(host_dir / "secret"), str(benchmarks_dir / "leetcode.jsonl"), str(Path.cwd() / "README.md")]
    paths += ["/etc/passwd", "/etc/shadow", "/etc/hostname", "/root/.bashrc", "/home"]
    code = (
        "import os, glob\n"
        "def visible():\n"
        f"    found = [p for p in {paths!r} if os.path.exists(p)]\n"
        "    for path in glob.glob('/proc/*/environ'):\n"
        "        try:\n"
        "            if b'hunter2' in open(path, 'rb').read():\n"
        "                found.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return found\n"
    )
    tests = "assert visible() == []\n"
    tests += "assert b'PATH=' in open('/proc/self/environ', 'rb').read()\n"  # the scan itself works
    result = run(code, tests)
    assert result.passed, result.detail


@needs_bwrap
def test_read_only_system_and_bounded_work_folder(host_dir):
    code = (
        "import os\n"
        "def attempts():\n"
        "    out = []\n"
        "    for path in ('/usr/pwned', '/pwned', '/etc/pwned', '/proc/pwned', '/dev/pwned'):\n"
        "        try:\n"
        "            open(path, 'w').write('x')\n"
        "            out.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return out\n"
        "def fill(folder):\n"
        "    try:\n"
        "        for i in range(100):\n"
        "            with open(f'{folder}/f{i}', 'wb') as f:\n"
        "                f.write(b'x' * (1 << 20))\n"
        "    except OSError as error:\n"
        "        return error.strerror\n"
        "    return 'filled'\n"
    )
    tests = "assert attempts() == []\n"
    tests += "assert fill('.') == 'No space left on device'\n"  # the work folder: 4 x max_file_mb
    tests += "assert fill('/dev/shm') == 'No space left on device'\n"  # RAM, not counted by RLIMIT_AS
    tests += "assert fill('/dev') == 'Read-only file system'\n"
    result = run(code, tests, max_file_mb=2)
    assert result.passed, result.detail


# ---- processes -------------------------------------------------------------------------------------
@needs_bwrap
@pytest.mark.skipif(not AS_ROOT, reason="the host victim runs as the sandbox uid, which needs root")
def test_kill_all_and_daemons_stay_inside():
    """kill(-1) reaches only the sandbox's PID namespace (not a host process of the same uid), and a
    setsid + double-fork daemon dies with the sandbox."""
    uid = _sandbox_bwrap.SANDBOX_UID
    victim = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        code = (
            "import os, signal, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(120)\n"
            "    os._exit(0)\n"
            "time.sleep(0.2)\n" + RIGHT
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            result = run_code(code, TESTS, timeout_s=20)
        assert result.passed and time.perf_counter() - start < 20  # the daemon did not hold the pipes
        assert _sandbox_processes(exclude=(victim.pid,)) == []
        run_code("import os, signal\nos.kill(-1, signal.SIGKILL)\n" + RIGHT, TESTS)
        assert victim.poll() is None, "kill(-1) inside the sandbox killed a host process"
    finally:
        victim.kill()
        victim.wait()


@needs_bwrap
def test_process_limit_holds():
    """RLIMIT_NPROC holds for the sandbox uid (it did nothing for root: 150 processes under 64)."""
    code = (
        "import os, time\n"
        "def spawn():\n"
        "    count = 0\n"
        "    try:\n"
        "        for _ in range(150):\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(5)\n"
        "                os._exit(0)\n"
        "            count += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "    return 50 <= count < 64  # forks work, and stop at the limit\n"
    )
    assert run(code, "assert spawn() == True", max_processes=64).passed


@needs_bwrap
def test_fork_bomb_is_contained():
    result = run("import os\nwhile True:\n    os.fork()\n", TESTS, timeout_s=3.0)
    assert result.status in ("failed", "timeout")


@needs_bwrap
def test_kernel_attack_surface_is_refused():
    """seccomp (and the dropped capabilities) refuse namespaces, mounts, ptrace, io_uring, bpf,
    keyrings, perf events and non-Unix sockets."""
    code = (
        "import ctypes, errno, os, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def calls():\n"
        "    results = {\n"
        "        'unshare': libc.unshare(0x10000000),\n"
        "        'mount': libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None),\n"
        "        'ptrace': libc.ptrace(16, 1, 0, 0),\n"
        "        'io_uring_setup': libc.syscall(425, 8, ctypes.create_string_buffer(120)),\n"
        "        'bpf': libc.syscall(321, 0, None, 0),\n"
        "        'keyctl': libc.syscall(250, 0, 0, 0, 0),\n"
        "        'perf_event_open': libc.syscall(298, None, 0, -1, -1, 0),\n"
        "    }\n"
        "    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):\n"
        "        try:\n"
        "            kind = socket.SOCK_DGRAM if family != socket.AF_PACKET else socket.SOCK_RAW\n"
        "            socket.socket(family, kind)\n"
        "            results[str(family)] = 0\n"
        "        except OSError:\n"
        "            results[str(family)] = -1\n"
        "    return sorted(name for name, value in results.items() if value != -1)\n"
    )
    result = run(code, "assert calls() == []")
    assert result.passed, result.detail


# ---- network -------------------------------------------------------------------------------------
@needs_bwrap
def test_no_network(host_dir):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.settimeout(0.5)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(host_dir / "host.sock"))
    (host_dir / "host.sock").chmod(0o777)
    unix.listen()
    unix.settimeout(0.5)
    abstract_name = f"\0em_hf_{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen()
    abstract.settimeout(0.5)
    code = (
        "import socket\n"
        "def reach():\n"
        "    reached = []\n"
        f"    for family, address in ((socket.AF_INET, ('127.0.0.1', {tcp.getsockname()[1]})),\n"
        "                            (socket.AF_INET, ('1.1.1.1', 53)),\n"
        f"                            (socket.AF_UNIX, {str(host_dir / 'host.sock')!r}),\n"
        f"                            (socket.AF_UNIX, {abstract_name!r})):\n"
        "        try:\n"
        "            s = socket.socket(family)\n"
        "            s.settimeout(2)\n"
        "            s.connect(address)\n"
        "            reached.append(address)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return reached\n"
    )
    try:
        result = run(code, "assert reach() == []")
        assert result.passed, result.detail
        for listener in (tcp, unix, abstract):
            with pytest.raises(TimeoutError):
                listener.accept()
    finally:
        for listener in (tcp, unix, abstract):
            listener.close()


# ---- resources -----------------------------------------------------------------------------------
@needs_bwrap
def test_memory_and_file_size_limits():
    bomb = run("x = bytearray(8 * 1024**3)\n", TESTS, memory_mb=256)
    assert bomb.status == "failed" and "MemoryError" in bomb.detail
    growing = run("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", TESTS, memory_mb=256)
    assert growing.status == "failed"
    big = run("open('big', 'wb').write(b'x' * (8 << 20))\n", TESTS, max_file_mb=1)
    assert big.status == "failed" and "File too large" in big.detail


@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
def test_output_floods_are_bounded(isolation):
    """Megabytes on stdout/stderr do not fill the parent (only a tail is kept) and do not change the
    verdict; a flood of the result channel fails."""
    flood = "import os\nfor _ in range(50):\n    os.write(1, b'x' * (1 << 20))\n"
    flood += "    os.write(2, b'y' * (1 << 20))\n"
    assert run(flood + RIGHT, TESTS, isolation=isolation).passed
    channel = (
        "import os, sys\nfor _ in range(80):\n    os.write(int(sys.argv[-1]), b'z' * (1 << 20))\n" + RIGHT
    )
    result = run(channel, TESTS, isolation=isolation, timeout_s=20)
    assert result.status == "failed" and "result channel" in result.detail


# ---- timing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass\n",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n",
        "import threading\ndef burn():\n    while True:\n        pass\n"
        "ts = [threading.Thread(target=burn) for _ in range(4)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]\n",
        "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
    ],
    ids=["loop", "ignore-sigterm", "threads", "closed-output"],
)
def test_runaway_programs_time_out(code, isolation):
    result = run(code, TESTS, isolation=isolation, timeout_s=1.5)
    if result.status == "failed":  # 4 busy threads on few cores reach the CPU-time limit first
        assert "SIGKILL" in result.detail or "SIGXCPU" in result.detail, result
    else:
        assert result.status == "timeout" and result.detail == "killed after 1.5 s"


@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
def test_replacing_the_output_with_a_fifo_does_not_hang(isolation):
    """The audit's hang: the child replaced the parent's stderr file with a FIFO. Output now goes
    through pipes read under the deadline; there is no file to replace, and no folder survives."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(tmp.glob("em_hf_sandbox_*"))
    code = (
        "import os, sys\n"
        "d = os.open('..', os.O_RDONLY)\n"
        "try:\n"
        "    os.remove('stderr', dir_fd=d)\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    os.mkfifo('stderr', dir_fd=d)\n"
        "except OSError:\n"
        "    pass\n"
        "sys.exit(1)\n"
    )
    result = run(code, TESTS, isolation=isolation, timeout_s=3)
    assert result.status == "failed"
    assert set(tmp.glob("em_hf_sandbox_*")) <= before


@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
def test_a_wrong_value_before_a_hang_is_a_failure(isolation):
    code = "import time\ncalls = []\ndef f():\n    calls.append(1)\n"
    code += "    if len(calls) > 1:\n        time.sleep(600)\n    return 0\n"
    result = run(code, "assert f() == 1\nassert f() == 0\n", isolation=isolation, timeout_s=2)
    assert result.status == "failed" and "got 0, expected 1" in result.detail


# ---- grading: no false passes --------------------------------------------------------------------
FAKES = {
    "sys_exit": "import sys\nsys.exit(0)\n",
    "os_exit": "import os\nos._exit(0)\n",
    "exit_builtin": "exit()\n",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG,
    "excepthook": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG,
    "main_guard_exit": WRONG + "if __name__ == '__main__':\n    exit()\n",
    "exit_in_method": "import sys\nclass Solution:\n    def add(self, a, b):\n        sys.exit(0)\n",
    "os_exit_in_method": "import os\nclass Solution:\n    def add(self, a, b):\n        os._exit(0)\n",
    "sigkill_self": "import os, signal\nclass Solution:\n    def add(self, a, b):\n"
    "        os.kill(os.getpid(), 9)\n",
    "alarm": "import signal, time\nsignal.alarm(1)\nclass Solution:\n    def add(self, a, b):\n"
    "        time.sleep(5)\n",
    "always_equal": "class E:\n    def __eq__(self, other):\n        return True\n"
    "class Solution:\n    def add(self, a, b):\n        return E()\n",
    "int_subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n"
    "class Solution:\n    def add(self, a, b):\n        return I(0)\n",
    "forged_end": "import os\nfor fd in range(3, 64):\n    try:\n"
    '        os.write(fd, b\'{"end": "0"}\\n\')\n    except OSError:\n        pass\nos._exit(0)\n',
    "forged_value": "import os\nfor fd in range(3, 64):\n    try:\n"
    '        os.write(fd, b\'{"k": 0, "v": {"i": "0x5"}}\\n{"k": 1, "v": {"i": "0x0"}}\\n\')\n'
    "    except OSError:\n        pass\n" + WRONG,
    "nested_record": "import os, sys\nos.write(int(sys.argv[-1]), b'[' * 200000 + b'\\n')\n" + WRONG,
    "nested_value": "import os, sys\n"
    "os.write(int(sys.argv[-1]), b'{\"k\": 0, \"v\": ' + b'[' * 50000 + b']' * 50000 + b'}\\n')\n" + WRONG,
    "rebind_checker": "class Solution:\n    def add(self, a, b):\n"
    "        globals()['_em_hf_check'] = lambda k, v: None\n        return 0\n",
    "close_channel": "import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n"
    "    except OSError:\n        pass\n" + WRONG,
    "print_passed": "print('passed')\nimport sys\nsys.stdout.flush()\n" + WRONG,
    "thread_exit": "import threading, os, time\n"
    "threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0)), daemon=True).start()\n"
    "class Solution:\n    def add(self, a, b):\n        time.sleep(1)\n        return 0\n",
    "raise_base_exception": "class Solution:\n    def add(self, a, b):\n        raise KeyboardInterrupt\n",
    "monkeypatch_builtins": "import builtins, os, json\nos.write = lambda *a: 0\n"
    "json.dumps = lambda *a, **k: '{\"end\": 1}'\nbuiltins.repr = lambda x: '5'\n" + WRONG,
}


@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
@pytest.mark.parametrize("fake", list(FAKES))
def test_no_false_pass(fake, isolation):
    result = run(FAKES[fake], TESTS, isolation=isolation, timeout_s=5)
    assert result.status in ("failed", "timeout"), (fake, result)


@pytest.mark.parametrize("isolation", [pytest.param("bwrap", marks=needs_bwrap), "process"])
def test_exits_in_the_candidate(isolation):
    """The audit's reproductions: sys.exit(0) with a failing test fails; SystemExit at import is the
    candidate's failure; an honest sys.exit(main()) under the main guard passes when it is right."""
    exit_zero = run("import sys\nsys.exit(0)", "assert 1 == 2", isolation=isolation)
    assert exit_zero.status == "failed" and "SystemExit" in exit_zero.detail
    main = "import sys\ndef main():\n    print(Solution().add(1, 2))\n    return 0\n"
    guarded = run(
        RIGHT + main + "if __name__ == '__main__':\n    sys.exit(main())\n", TESTS, isolation=isolation
    )
    assert guarded.passed, guarded
    unguarded = run(RIGHT + main + "sys.exit(main())\n", TESTS, isolation=isolation)
    assert unguarded.status == "failed" and "before the tests" in unguarded.detail
