"""Adaptive temperature as a ``transformers`` logits warper: a thin wrapper over
:func:`em_hf.ops.adaptive_temperature` (the EM-INF baseline of "The Unreasonable Effectiveness of
Entropy Minimization in LLM Reasoning", Appendix B, Algorithm 1)."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from em_hf.ops import adaptive_temperature
from em_hf.ops.logit_optimization import ADAPTIVE_TEMPERATURE_PARAMETERS, document_parameters
from em_hf.utils.validation import check_adaptive_temperature_arguments

__all__ = ["AdaptiveTemperatureLogitsWarper"]


class AdaptiveTemperatureLogitsWarper(LogitsProcessor):
    """Per-row adaptive temperature, vectorized over the batch.

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (arXiv 2505.15134),
    Appendix B, Algorithm 1: a row whose entropy H0 is above ``threshold`` is divided by the tau in
    [``tau_min``, ``tau_max``] (found by bisection) that brings its entropy within ``tol`` of
    max(threshold, alpha * H0). Pass it in ``logits_processor=[...]`` of ``generate``; like every
    user processor it runs before ``generate``'s own temperature/top-k/top-p warpers. Each call is
    :func:`em_hf.ops.adaptive_temperature` on the step's scores; the input is not modified.

    Under beam search (``num_beams > 1``) ``generate`` hands processors each beam's log-probabilities
    (one row per beam) and adds what they return to the beam's running score. Each beam's row gets its
    own tau, so the beams' scores are rescaled by different factors and beam search with this warper can
    keep other beams, and return other sequences, than plain beam search (greedy decoding keeps its
    argmax). Its output (log-probabilities / tau) is not normalized; pass ``renormalize_logits=True`` to
    ``generate`` so that the beam scores add up log-probabilities of the sharpened distributions.

    Parameters:
        {parameters}

    Examples:

    ```python
    >>> import torch
    >>> from em_hf import AdaptiveTemperatureLogitsWarper
    >>> warper = AdaptiveTemperatureLogitsWarper(alpha=0.5, tol=0.01)
    >>> warper.temperatures(torch.tensor([[1.0, 0.5, 0.0, -0.5], [9.0, 0.0, 0.0, 0.0]])).round(decimals=3)
    tensor([0.3120, 1.0000], dtype=torch.float64)

    In ``generate``, with a tiny random model:

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)).eval()
    >>> prompt = torch.tensor([[1, 2, 3]])
    >>> model.generate(prompt, do_sample=True, max_new_tokens=5, logits_processor=[warper]).shape
    torch.Size([1, 8])

    ```
    """

    def __init__(self, alpha=0.85, threshold=0.3, tau_min=0.01, tau_max=1.0, max_iter=100, tol=0.1) -> None:
        checked = check_adaptive_temperature_arguments(alpha, threshold, tau_min, tau_max, max_iter, tol)
        self.alpha, self.threshold, self.tau_min, self.tau_max, self.max_iter, self.tol = checked

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, threshold={self.threshold}, tau_min={self.tau_min}, "
            f"tau_max={self.tau_max}, max_iter={self.max_iter}, tol={self.tol})"
        )

    def _settings(self) -> dict[str, float]:
        names = ("alpha", "threshold", "tau_min", "tau_max", "max_iter", "tol")
        return {name: getattr(self, name) for name in names}

    def temperatures(self, scores: torch.Tensor) -> torch.Tensor:
        """The per-row temperature tau (float64, shape [batch]); 1.0 for rows left untouched."""
        return adaptive_temperature(scores, **self._settings(), return_tau=True)[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return adaptive_temperature(scores, **self._settings())


document_parameters(AdaptiveTemperatureLogitsWarper, ADAPTIVE_TEMPERATURE_PARAMETERS)
