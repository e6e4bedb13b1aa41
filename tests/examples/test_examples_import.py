"""Every example script still imports against the package (a moved module breaks them loudly here,
not in a user's terminal). The scripts run their work under ``if __name__ == "__main__"``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # the benchmark scripts import their harness
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.__doc__, f"{path.name} has no module docstring saying what it shows"
