"""The bubblewrap (``bwrap``) command line of the code sandbox, the sandbox user, and its seccomp filter.

What the command gives the program (see :func:`bwrap_command`):

- new user, mount, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``, user namespace
  required); no nested user namespaces (``--disable-userns``); every capability dropped;
  ``no_new_privs``; its own session (``--new-session``: no terminal injection); killed with its parent
  (``--die-with-parent``), and with it every process of its PID namespace;
- a file system that holds only the interpreter: ``/usr`` (and the ``/bin``, ``/lib*`` links or
  folders) and the interpreter's prefixes, read-only; fresh ``/proc`` and ``/dev`` (read-only, with
  a bounded ``/dev/shm``); a private tmpfs of bounded size at ``/sandbox`` (working folder, ``HOME``,
  ``TMPDIR``); the root read-only. Nothing else of the host (no home, no repository, no benchmark
  files, no sockets) is visible;
- no network at all (no interface but a down loopback);
- a seccomp filter (built with libseccomp when it is installed) that refuses, with ``EPERM``, the
  system calls a Python program never needs and kernel exploits favour: ``ptrace``, mounts,
  namespaces, keyrings, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring``, kernel modules,
  sockets other than ``AF_UNIX``, and so on; other architectures' system calls kill the process;
- as root, the sandbox runs as a dedicated unprivileged uid (:data:`SANDBOX_UID`): the host sees the
  program as that uid, so ``RLIMIT_NPROC`` holds (the kernel ignores it for root) and the host's
  files are accessed with "other" permissions only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
from functools import lru_cache

__all__ = [
    "SANDBOX_UID",
    "SandboxUnavailableError",
    "bwrap_command",
    "probe",
    "seccomp_filter",
    "spawn_kwargs",
]

SANDBOX_UID = int(os.environ.get("EM_HF_SANDBOX_UID", "2000000000"))
"""The uid (and gid) the sandbox runs as when em_hf runs as root; no account uses it. Override with
``EM_HF_SANDBOX_UID``."""

WORK_DIR = "/sandbox"
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf install "
    "bubblewrap`; `make install` in the em_hf checkout does it)"
)

OPT_OUT_HINT = (
    "To run code you trust without isolation from your files and network, pass isolation='process' "
    "(em-hf eval --unsafe-code-sandbox)."
)


class SandboxUnavailableError(RuntimeError):
    """The bubblewrap sandbox cannot run here (no ``bwrap``, or the kernel refuses its namespaces).

    Parameters:
        message (`str`):
            Why, how to install bubblewrap, and how to opt into ``isolation="process"`` instead.

    Examples:
        >>> from em_hf.eval.sandbox import SandboxUnavailableError
        >>> issubclass(SandboxUnavailableError, RuntimeError)
        True
    """


# System calls no LeetCode-style Python program makes, each a known way out of or into the kernel.
_DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare",
    "setns", "add_key", "keyctl", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "vhangup", "uselib", "personality",
    "fanotify_init", "iopl", "ioperm", "nfsservctl", "kcmp", "pidfd_getfd",
)  # fmt: skip
_AF_UNIX = 1


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


@lru_cache(maxsize=1)
def seccomp_filter() -> bytes | None:
    """The BPF program of the filter (see the module docstring), or None when libseccomp is missing."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, refuse = 0x7FFF0000, 0x00050000 | errno.EPERM  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM)
    context = lib.seccomp_init(allow)
    if not context:
        return None
    try:
        for syscall in _DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number >= 0 and lib.seccomp_rule_add_array(context, refuse, number, 0, None) != 0:
                return None
        not_unix = (_ArgCmp * 1)(_ArgCmp(0, 1, _AF_UNIX, 0))  # SCMP_A0(SCMP_CMP_NE, AF_UNIX)
        for syscall in ("socket", "socketpair"):
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if lib.seccomp_rule_add_array(context, refuse, number, 1, not_unix) != 0:
                return None
        read, write = os.pipe()
        try:
            if lib.seccomp_export_bpf(context, write) != 0:
                return None
            os.close(write)
            write = -1
            chunks = []
            while chunk := os.read(read, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(read)
            if write != -1:
                os.close(write)
    finally:
        lib.seccomp_release(context)


def spawn_kwargs() -> dict:
    """``subprocess.Popen`` arguments that start ``bwrap`` as :data:`SANDBOX_UID` when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}


def _root_binds() -> list[str]:
    """``/usr`` and the top-level ``/bin``, ``/sbin``, ``/lib*``: links as links, folders read-only."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return [*args, "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]


def _interpreters() -> list[tuple[str, list[str]]]:
    """Candidate interpreters, best first, with the folders each needs: the running one (its venv and
    base prefix), then the system's ``python3`` (for when the sandbox uid cannot read the running one,
    e.g. a pyenv under root's mode-700 home)."""
    paths = {sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    folders = sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))  # drop nested ones
    found = [(sys.executable, folders)]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        found.append((system, []))
    return found


def bwrap_command(
    bwrap: str,
    python: str,
    folders: list[str],
    seccomp_fd: int | None,
    tmpfs_bytes: int,
    info_fd: int | None = None,
) -> list[str]:
    """The ``bwrap`` argument list up to (and including) the interpreter; the caller appends its arguments."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "1000", "--gid", "1000"]
    args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    args += _root_binds()
    for folder in folders:
        if folder != "/usr" and not folder.startswith("/usr/") and os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", WORK_DIR]
    # /dev is a tmpfs of half the RAM: read-only, with a small /dev/shm (POSIX semaphores) on top.
    args += ["--size", str(max(tmpfs_bytes // 4, 1 << 20)), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--clearenv"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORK_DIR, "TMPDIR": WORK_DIR}
    env |= {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    for key, value in env.items():
        args += ["--setenv", key, value]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, python, "-I", "-B"]


@lru_cache(maxsize=1)
def probe() -> tuple[str, str, tuple[str, ...]]:
    """``(bwrap, python, folders)`` of a sandbox that starts here (checked once, by running
    ``python -c pass`` in it); raises :class:`SandboxUnavailableError` saying why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            f"em_hf runs model-written code under bubblewrap, and the `bwrap` command is not installed: "
            f"{INSTALL_HINT}. {OPT_OUT_HINT}"
        )
    reasons = []
    for python, folders in _interpreters():
        command = bwrap_command(bwrap, python, folders, None, 1 << 20)
        try:
            result = subprocess.run(
                [*command, "-c", "import json, resource"],
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                **spawn_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as error:
            reasons.append(f"{python}: {error}")
            continue
        if result.returncode == 0:
            return bwrap, python, tuple(folders)
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reasons.append(f"{python}: {message[-1] if message else f'exit status {result.returncode}'}")
    raise SandboxUnavailableError(
        "bubblewrap is installed but cannot start the sandbox here (" + "; ".join(reasons) + "). It needs "
        "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or "
        "user.max_user_namespaces > 0; on Ubuntu 23.10+ an AppArmor profile allowing bwrap) and an "
        f"interpreter the sandbox user can read. {OPT_OUT_HINT}"
    )
