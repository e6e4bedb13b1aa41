"""Trainers: EM-FT / one-shot EM (``EntropyMinTrainer``) and EM-RL on trl's RLOO (``EMRLOOTrainer``).

Imported lazily: ``import em_hf.trainers`` does not import trl or peft until a name is used."""

from __future__ import annotations

from em_hf.utils.lazy import exports_by_name, lazy_module_attributes
from em_hf.utils.quiet import quiet_bitsandbytes_logs

# Before trl (and with it bitsandbytes) is imported by a trainer module: see em_hf.utils.quiet.
quiet_bitsandbytes_logs()

_EXPORTS = exports_by_name(
    {
        "em_hf.trainers.em_config": ("EntropyMinConfig",),
        "em_hf.trainers.em_trainer": ("EntropyMinTrainer",),
        "em_hf.trainers.callbacks": ("BenchmarkEarlyStoppingCallback",),
        "em_hf.trainers.collapse_guard": ("CollapseGuardCallback", "CollapseGuardConfig"),
        "em_hf.trainers.emrloo_config": ("EMRLOOConfig",),
        "em_hf.trainers.emrloo_trainer": ("EMRLOOTrainer",),
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
