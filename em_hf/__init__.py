"""em_hf: entropy minimization for LLM reasoning as a drop-in Hugging Face Transformers add-on.

It implements two papers, referred to by short name everywhere else in the package:

- "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (arXiv:2505.15134;
  "Unreasonable Effectiveness of EM"): EM-FT (:class:`EntropyMinTrainer`), EM-RL
  (:class:`EMRLOOTrainer`, :mod:`em_hf.rewards`) and EM-INF (:class:`EntropyMinLogitsProcessor`);
- "One-shot Entropy Minimization" (arXiv:2505.20282; "One-shot EM"): :meth:`EntropyMinConfig.one_shot`
  and :func:`select_by_pass_variance`.

Public names are imported lazily, so ``import em_hf`` stays cheap::

    from em_hf import EntropyMinLogitsProcessor, AdaptiveTemperatureLogitsWarper
    from em_hf import load_default_model, token_entropy
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from em_hf.utils.lazy import exports_by_name, lazy_module_attributes

__version__ = "0.1.0"

_EXPORTS = exports_by_name(
    {
        "em_hf.generation": (
            "EntropyMinLogitsProcessor",
            "AdaptiveTemperatureLogitsWarper",
            "TokenEntropyRecorder",
        ),
        "em_hf.ops": (
            "token_entropy",
            "token_statistics",
            "entropy_grad",
            "linear_token_entropy",
            "linear_entropy_loss",
        ),
        "em_hf.models": ("load_model", "load_default_model"),
        "em_hf.trainers": (
            "EntropyMinConfig",
            "EntropyMinTrainer",
            "BenchmarkEarlyStoppingCallback",
            "CollapseGuardCallback",
            "CollapseGuardConfig",
            "EMRLOOConfig",
            "EMRLOOTrainer",
        ),
        "em_hf.eval": ("arithmetic_evaluator", "benchmark_evaluator"),
        "em_hf.data": ("select_by_pass_variance",),
    }
)

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names are loaded on first access
    from em_hf.generation import (  # noqa: F401
        AdaptiveTemperatureLogitsWarper,
        EntropyMinLogitsProcessor,
        TokenEntropyRecorder,
    )
    from em_hf.models import load_default_model, load_model  # noqa: F401
    from em_hf.ops import (  # noqa: F401
        entropy_grad,
        linear_entropy_loss,
        linear_token_entropy,
        token_entropy,
        token_statistics,
    )
    from em_hf.trainers import (  # noqa: F401
        BenchmarkEarlyStoppingCallback,
        CollapseGuardCallback,
        CollapseGuardConfig,
        EMRLOOConfig,
        EMRLOOTrainer,
        EntropyMinConfig,
        EntropyMinTrainer,
    )


__getattr__, __dir__ = lazy_module_attributes(__name__, globals(), _EXPORTS)
