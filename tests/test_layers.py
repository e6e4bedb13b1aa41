"""The direction of imports inside em_hf (CONTRIBUTING.md, "Layers"):

    utils <- {ops, models} <- generation <- {data, rewards, trainers} <- {eval, metrics} <- demos <- cli

A module may import from its own layer or any layer to its left, never to its right; every import
counts, including the ones inside functions. The failure message tells a new contributor the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import em_hf

PACKAGE = Path(em_hf.__file__).parent
LAYERS = [
    ("utils",),
    ("ops", "models"),
    ("generation",),
    ("data", "rewards", "trainers"),
    ("eval", "metrics"),
    ("demos",),
    ("cli",),
]
RULE = "utils <- {ops, models} <- generation <- {data, rewards, trainers} <- {eval, metrics} <- demos <- cli"
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str | None:
    """The top-level part of an em_hf module name (``em_hf.eval.report`` -> ``eval``)."""
    parts = module.split(".")
    if parts[0] != "em_hf" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from em_hf import eval`` names a subpackage: count it as an import of that subpackage.
            if target == "em_hf":
                found.extend((node.lineno, f"em_hf.{alias.name}") for alias in node.names)
    return found


def layer_violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the public API re-exports every layer (lazily)
        source = _component(_module_name(path)) or path.stem
        if source not in LAYER_OF:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: not in any layer; add it to LAYERS")
            continue
        for line, target in _imports(path):
            component = _component(target)
            if component is None or component == source or component not in LAYER_OF:
                continue
            if LAYER_OF[component] > LAYER_OF[source]:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer '{component}') from "
                    f"layer '{source}'. Imports go one way: {RULE}. Move the shared code down to the lowest "
                    "layer that needs it (see CONTRIBUTING.md, 'Layers')."
                )
    return problems


def test_imports_go_one_way():
    problems = layer_violations()
    assert not problems, "\n".join(problems)


def test_every_component_is_in_a_layer():
    components = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    components |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert components <= set(LAYER_OF), f"not in a layer: {sorted(components - set(LAYER_OF))}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself must fail on a violation (a test that cannot fail proves nothing)."""
    fake = tmp_path / "em_hf"
    (fake / "rewards").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "rewards" / "__init__.py").write_text("def f():\n    from em_hf.eval import grading\n")
    (fake / "rewards" / "ok.py").write_text("from em_hf.generation import prompts\nfrom ..ops import build\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    problems = layer_violations()
    assert len(problems) == 1
    assert (
        "em_hf/rewards/__init__.py:2 imports em_hf.eval (layer 'eval') from layer 'rewards'" in (problems[0])
    )


def test_lower_layers_do_not_load_the_evaluation_harness():
    """``import em_hf.rewards`` (and the trainers' modules) must not pull in the sandbox or benchmarks."""
    code = (
        "import sys, em_hf.rewards, em_hf.data, em_hf.trainers.em_loss, em_hf.generation.batched\n"
        "print(sorted(m for m in sys.modules if m.startswith(('em_hf.eval', 'em_hf.cli', 'em_hf.demos'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
