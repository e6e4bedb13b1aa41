"""Trainers: EM-FT / one-shot EM (``EntropyMinTrainer``) and EM-RL on trl's RLOO (``EMRLOOTrainer``).

Imported lazily: ``import em_hf.trainers`` does not import trl or peft until a name is used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "EntropyMinConfig": "em_hf.trainers.em_config",
    "EntropyMinTrainer": "em_hf.trainers.em_trainer",
    "BenchmarkEarlyStoppingCallback": "em_hf.trainers.callbacks",
    "arithmetic_evaluator": "em_hf.trainers.callbacks",
    "EMRLOOConfig": "em_hf.trainers.emrloo_config",
    "EMRLOOTrainer": "em_hf.trainers.emrloo_trainer",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback, arithmetic_evaluator  # noqa: F401
    from em_hf.trainers.em_config import EntropyMinConfig  # noqa: F401
    from em_hf.trainers.em_trainer import EntropyMinTrainer  # noqa: F401
    from em_hf.trainers.emrloo_config import EMRLOOConfig  # noqa: F401
    from em_hf.trainers.emrloo_trainer import EMRLOOTrainer  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'em_hf.trainers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
