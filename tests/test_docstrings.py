"""The docstrings a transformers user reads with ``help()``: every public class documents its
parameters and shows an example (the examples run as doctests: pytest collects ``em_hf/`` with
``--doctest-modules``), the main entry points too, and no docstring points outside the package."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import em_hf

ENTRY_POINTS = [
    "em_hf.EntropyMinLogitsProcessor",
    "em_hf.AdaptiveTemperatureLogitsWarper",
    "em_hf.token_entropy",
    "em_hf.linear_token_entropy",
    "em_hf.ops.em_inf",
    "em_hf.ops.adaptive_temperature",
    "em_hf.EntropyMinTrainer",
    "em_hf.EMRLOOTrainer",
    "em_hf.rewards.token_entropy_reward",
    "em_hf.rewards.sequence_logprob_reward",
    "em_hf.rewards.self_consistency_reward",
    "em_hf.load_default_model",
    "em_hf.load_model",
    "em_hf.select_by_pass_variance",
    "em_hf.arithmetic_evaluator",
    "em_hf.metrics.load",
]
try:
    import vllm  # noqa: F401

    ENTRY_POINTS += [
        "em_hf.generation.vllm.EntropyMinVLLMProcessor",
        "em_hf.generation.vllm.AdaptiveTemperatureVLLMProcessor",
    ]
except ImportError:
    pass


def _public_modules():
    for info in pkgutil.walk_packages(em_hf.__path__, "em_hf."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:
            if not info.name.startswith("em_hf.generation.vllm"):
                raise  # the vLLM processors need vLLM; nothing else may fail to import


def _public_classes():
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(
    ("name", "cls"), list(_public_classes()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_classes_have_parameters_and_examples(name, cls):
    doc = inspect.getdoc(cls) or ""
    assert "Parameters:" in doc, f"{name}: add a trl-style `Parameters:` block to its docstring"
    assert "Examples:" in doc and ">>>" in doc, f"{name}: add an `Examples:` block that runs (a doctest)"


@pytest.mark.parametrize("dotted", ENTRY_POINTS)
def test_entry_points_have_parameters_and_runnable_examples(dotted):
    doc = inspect.getdoc(_resolve(dotted)) or ""
    assert "Parameters:" in doc and "Examples:" in doc and ">>>" in doc, dotted


def test_no_package_file_points_outside_the_package():
    """Papers by name (their arXiv ids once, in ``em_hf/__init__.py``), no "paper 1", no SPEC.md, no
    issue numbers, no test paths."""
    banned = re.compile(r"paper [12]\b|SPEC\.md|\bissue \d|\btests/", re.IGNORECASE)
    offenders = [
        f"{path.relative_to(Path(em_hf.__file__).parents[1])}:{number}: {line.strip()}"
        for path in sorted(Path(em_hf.__file__).parent.rglob("*"))
        if path.suffix in {".py", ".cpp", ".h", ".cu", ".json"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if banned.search(line)
    ]
    assert not offenders, "\n".join(offenders)
    assert "2505.15134" in em_hf.__doc__ and "2505.20282" in em_hf.__doc__
