"""vLLM support. EM-INF and adaptive temperature as batch-level logits processors of vLLM's V1
engine (:mod:`em_hf.generation.vllm.processors`), and vLLM generation for the evaluation harness
(:mod:`em_hf.generation.vllm.engine`).

``EntropyMinVLLMProcessor`` and ``AdaptiveTemperatureVLLMProcessor`` are switched on per request
through ``SamplingParams(extra_args={"em_inf": {...}})`` / ``{"adaptive_temperature": {...}}`` (or
``vllm_xargs`` of an OpenAI-compatible request to ``vllm serve``, which loads them through the
``vllm.logits_processors`` entry point of this package). Names load lazily; a name that needs vLLM
raises an ``ImportError`` that says how to install it when vLLM is missing.
"""

from __future__ import annotations

from em_hf.utils.lazy import exports_by_name, lazy_module_attributes

_EXPORTS = exports_by_name(
    {
        "em_hf.generation.vllm.processors": ("AdaptiveTemperatureVLLMProcessor", "EntropyMinVLLMProcessor"),
        "em_hf.generation.vllm.engine": ("VLLMGenerator", "load_vllm", "sampling_params"),
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
