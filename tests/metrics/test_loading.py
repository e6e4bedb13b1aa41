"""Loading em_hf's metric scripts with evaluate: by name, by folder, offline, and shipped in the wheel."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import datasets
import evaluate
import pytest
import setuptools

import em_hf.metrics
from em_hf.metrics import METRICS, list_metrics, load, metric_path

NAMES = ["code_pass_at_k", "math_accuracy", "physics_accuracy"]
CLASSES = {
    "code_pass_at_k": "CodePassAtK",
    "math_accuracy": "MathAccuracy",
    "physics_accuracy": "PhysicsAccuracy",
}
PACKAGE = Path(em_hf.metrics.__file__).resolve().parent


def test_list_metrics_names_every_folder():
    assert list_metrics() == NAMES == sorted(METRICS)
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/*.py") if p.stem == p.parent.name)
    assert folders == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_load_returns_the_packaged_metric(name):
    metric = load(name)
    assert isinstance(metric, evaluate.Metric)
    assert type(metric).__name__ == CLASSES[name]
    assert metric.name == name
    assert metric_path(name) == PACKAGE / name / f"{name}.py"


@pytest.mark.parametrize("name", NAMES)
def test_info_is_documented(name):
    info = load(name).info
    assert len(info.description) > 200
    assert "@" in info.citation and "title=" in info.citation
    assert "Parameters:" in info.inputs_description
    assert "predictions (" in info.inputs_description and "references (" in info.inputs_description
    features = info.features if isinstance(info.features, list) else [info.features]
    for feature_set in features:
        assert isinstance(feature_set, datasets.Features)
        assert set(feature_set) == {"predictions", "references"}


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_load_of_the_folder_and_of_the_script(name):
    by_folder = evaluate.load(str(PACKAGE / name), keep_in_memory=True)
    by_script = evaluate.load(str(PACKAGE / name / f"{name}.py"), keep_in_memory=True)
    assert type(by_folder).__name__ == type(by_script).__name__ == CLASSES[name]


def test_load_never_touches_the_network(monkeypatch):
    """Every socket connection and name lookup is recorded and refused: loading and computing
    must not try one (evaluate would swallow some failures, so the attempts are counted)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in NAMES:
        load(name)
    result = load("math_accuracy").compute(predictions=["\\boxed{3}"], references=["3"])
    assert result["math_accuracy"] == 1.0
    assert attempts == []


def test_keep_in_memory_default_and_override(tmp_path):
    assert load("math_accuracy").keep_in_memory is True
    on_disk = load("math_accuracy", keep_in_memory=False, cache_dir=str(tmp_path))
    assert on_disk.keep_in_memory is False
    assert on_disk.compute(predictions=["1", "2"], references=["1", "3"])["math_accuracy"] == 0.5


def test_unknown_name_is_refused_without_the_hub():
    with pytest.raises(ValueError, match="`name` must be one of"):
        load("accuracy")
    with pytest.raises(ValueError, match="`name` must be one of"):
        metric_path("../math_accuracy")


def test_metric_folders_are_packages_shipped_in_the_wheel():
    """setup.cfg uses ``packages = find:``: each metric folder must be found as a package (it holds
    an ``__init__.py``), or the wheel would leave its script out."""
    root = PACKAGE.parent.parent
    packages = setuptools.find_packages(str(root), exclude=["tests", "tests.*", "examples"])
    for name in NAMES:
        assert f"em_hf.metrics.{name}" in packages


def _em_hf_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.startswith("em_hf.")}


def test_import_rule():
    """em_hf.metrics builds on em_hf.eval and em_hf.utils. Elsewhere in em_hf only the harness (em_hf.eval)
    imports it, and only the package itself (the pass@k estimator), never a metric script: those are
    loaded by `evaluate`."""
    for path in PACKAGE.rglob("*.py"):
        for name in _em_hf_imports(path):
            assert name.startswith(("em_hf.eval", "em_hf.utils", "em_hf.metrics")), (path, name)
    users = {}
    for path in PACKAGE.parent.rglob("*.py"):
        names = {n for n in _em_hf_imports(path) if n.startswith("em_hf.metrics")}
        if names and PACKAGE not in path.parents:
            users[path.relative_to(PACKAGE.parent).as_posix()] = names
    assert users == {"eval/report.py": {"em_hf.metrics"}, "eval/preflight.py": {"em_hf.metrics"}}
