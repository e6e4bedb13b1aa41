"""Logits processors for ``model.generate``: EM-INF and the adaptive-temperature baseline."""

from em_hf.generation.adaptive_temperature import AdaptiveTemperatureLogitsWarper
from em_hf.generation.entropy_min import EntropyMinLogitsProcessor
from em_hf.generation.recording import TokenEntropyRecorder

__all__ = ["AdaptiveTemperatureLogitsWarper", "EntropyMinLogitsProcessor", "TokenEntropyRecorder"]
