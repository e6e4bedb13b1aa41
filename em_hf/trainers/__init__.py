"""Trainers: EM-FT / one-shot EM (``EntropyMinTrainer``) and EM-RL on trl's RLOO (``EMRLOOTrainer``).

Imported lazily: ``import em_hf.trainers`` does not import trl or peft until a name is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from em_hf.utils.lazy import lazy_module_attributes

_EXPORTS = {
    "EntropyMinConfig": "em_hf.trainers.em_config",
    "EntropyMinTrainer": "em_hf.trainers.em_trainer",
    "BenchmarkEarlyStoppingCallback": "em_hf.trainers.callbacks",
    "EMRLOOConfig": "em_hf.trainers.emrloo_config",
    "EMRLOOTrainer": "em_hf.trainers.emrloo_trainer",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback  # noqa: F401
    from em_hf.trainers.em_config import EntropyMinConfig  # noqa: F401
    from em_hf.trainers.em_trainer import EntropyMinTrainer  # noqa: F401
    from em_hf.trainers.emrloo_config import EMRLOOConfig  # noqa: F401
    from em_hf.trainers.emrloo_trainer import EMRLOOTrainer  # noqa: F401


__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
