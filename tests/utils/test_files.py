"""Atomic writes, folder replacement and advisory locks (em_hf.utils.files)."""

from __future__ import annotations

import os

import pytest

import em_hf.utils.files as files
from em_hf.utils.files import FolderLockedError, atomic_write_text, file_lock, replace_folder, sha256_file


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, '{"a": 1}')

    def crash(descriptor):
        raise KeyboardInterrupt  # the process is stopped between the write and the rename

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"a": 2, "b": "a longer text"}')
    assert path.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_replace_folder_swaps_in_the_new_folder(tmp_path):
    target, staging = tmp_path / "best", tmp_path / ".best.new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_folder(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_held_lock_refuses_a_second_holder(tmp_path):
    lock = tmp_path / "run.lock"
    held = pytest.raises(FolderLockedError, match=f"held by process {os.getpid()}")
    with file_lock(lock), held, file_lock(lock, blocking=False):
        pass
    with file_lock(lock, blocking=False):  # released
        assert lock.read_text() == str(os.getpid())


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
