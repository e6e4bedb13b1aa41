"""Fixtures for the evaluation tests: the shared benchmark folder (tests skip cleanly without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from em_hf.eval.benchmarks import find_benchmarks_dir


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    folder = find_benchmarks_dir()
    if folder is None or not (folder / "math500.json").is_file():
        pytest.skip("../shared/benchmarks is not available (set EM_HF_BENCHMARKS to run these tests)")
    return folder
