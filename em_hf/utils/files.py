"""Crash- and concurrency-safe file handling: atomic writes, advisory locks, checksums.

- :func:`atomic_write_text` writes a file whole or not at all: the text goes to a temporary file in the
  same folder, is flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX), so a
  process killed mid-write leaves the old file or the new one, never a torn one.
- :func:`file_lock` holds an exclusive ``fcntl.flock`` on a lock file. The kernel releases it when the
  holder exits, however it exits (``kill -9`` included), so a crash never leaves a stale lock.
- :func:`replace_folder` puts a folder written elsewhere (a staging folder beside the target) in
  place of the target with two renames: the target is at all times the old folder, absent, or the
  new one, never a half-written one.
- :func:`sha256_file` hashes a file in chunks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["FolderLockedError", "atomic_write_text", "file_lock", "replace_folder", "sha256_file"]


class FolderLockedError(RuntimeError):
    """Another process holds the lock (raised by :func:`file_lock` with ``blocking=False``).

    Parameters:
        message (`str`):
            Which lock file, held by which process.

    Examples:
        >>> from em_hf.utils.files import FolderLockedError
        >>> str(FolderLockedError("run.lock is held by process 42"))
        'run.lock is held by process 42'
    """


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file beside it, fsync, ``os.replace``."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike,
    blocking: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for the ``with`` block.

    The holder's process id is written into the file, for the messages of the processes that wait.

    Parameters:
        path (`str` or `os.PathLike`):
            The lock file; its folder must exist.
        blocking (`bool`, *optional*, defaults to `True`):
            Wait for the lock; with `False`, raise :class:`FolderLockedError` when another process holds it.
        on_wait (`Callable[[str], None]`, *optional*):
            Called once, with the holder's process id (as written in the file), before waiting.

    Examples:
        >>> import os, tempfile
        >>> from em_hf.utils.files import FolderLockedError, file_lock
        >>> lock = os.path.join(tempfile.mkdtemp(), "run.lock")
        >>> with file_lock(lock):
        ...     print("held")
        held
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            if not blocking:
                raise FolderLockedError(f"{path} is held by process {holder}") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder ``staging`` to ``target`` (same file system), replacing what was there;
    the old ``target`` is renamed aside first and deleted last."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
