"""Lazy public names for a package ``__init__`` (PEP 562), so that ``import em_hf`` stays cheap and
does not import trl, peft or the compiled kernels until a name that needs them is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports_by_name", "lazy_module_attributes"]


def exports_by_name(modules: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """``{module: (name, ...)}`` -> ``{name: module}``, the ``exports`` of :func:`lazy_module_attributes`."""
    return {name: module for module, names in modules.items() for name in names}


def lazy_module_attributes(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package ``package`` whose globals are ``namespace``:
    ``exports`` maps a public name to the module that defines it; the first access imports that
    module and caches the value in ``namespace``.

    Use in a package ``__init__``::

        __getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
