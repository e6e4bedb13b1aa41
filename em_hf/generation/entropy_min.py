"""EM-INF as a ``transformers`` logits processor: a thin wrapper over :func:`em_hf.ops.em_inf`.

"The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 4: the logits of
every decoding step take a few gradient steps on their own entropy (plus a small KL term), per row,
with the closed-form gradient, so the processor runs under ``torch.no_grad()`` inside
``model.generate``. The mathematics, the per-row stop and the backends are in
:mod:`em_hf.ops.logit_optimization`.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from em_hf.ops import em_inf
from em_hf.ops.logit_optimization import EM_INF_PARAMETERS, document_parameters
from em_hf.utils.validation import check_em_inf_arguments

__all__ = ["EntropyMinLogitsProcessor"]


class EntropyMinLogitsProcessor(LogitsProcessor):
    """Per-row EM-INF logit optimization, to be passed in ``logits_processor=[...]`` of ``generate``.

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (arXiv 2505.15134),
    section 4. transformers applies user processors before the sampling warpers (temperature,
    top-k, top-p), so this processor sees the model's raw logits, as the paper's procedure
    requires; sampling with a low temperature (0.1 in the paper) follows. With greedy decoding it
    changes nothing that matters: a gradient step never moves another logit above the top one
    (Proposition 1). Each call is :func:`em_hf.ops.em_inf` on the step's scores: every row has its
    own entropy, stop and Adam moments, and the input scores are not modified.

    Under beam search (``num_beams > 1``) ``generate`` hands processors each beam's log-probabilities
    (one row per beam) and adds what they return to the beam's running score. This processor optimizes
    every beam's row on its own, so it changes the scores beams are ranked by: beam search with EM-INF
    can keep other beams, and return other sequences, than plain beam search (greedy decoding keeps its
    argmax). Its output is not normalized; pass ``renormalize_logits=True`` to ``generate`` so that the
    beam scores add up log-probabilities of the optimized distributions.

    Parameters:
        {parameters}

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from em_hf import EntropyMinLogitsProcessor
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    >>> model = LlamaForCausalLM(config).eval()
    >>> out = model.generate(torch.tensor([[1, 2, 3]]), do_sample=True, temperature=0.1, max_new_tokens=5,
    ...                      logits_processor=[EntropyMinLogitsProcessor(threshold=0.3, n_steps=3, lr=0.1)])
    >>> out.shape
    torch.Size([1, 8])
    >>> EntropyMinLogitsProcessor(n_steps=5)
    EntropyMinLogitsProcessor(threshold=0.3, n_steps=5, lr=0.1, kl_weight=0.001, optimizer='adam')

    ```
    """

    def __init__(self, threshold=0.3, n_steps=3, lr=0.1, kl_weight=0.001, optimizer="adam") -> None:
        self.threshold, self.n_steps, self.lr, self.kl_weight, self.optimizer = check_em_inf_arguments(
            threshold, n_steps, lr, kl_weight, optimizer
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold}, n_steps={self.n_steps}, lr={self.lr}, "
            f"kl_weight={self.kl_weight}, optimizer={self.optimizer!r})"
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        settings = {"threshold": self.threshold, "n_steps": self.n_steps, "lr": self.lr}
        return em_inf(scores, **settings, kl_weight=self.kl_weight, optimizer=self.optimizer)


document_parameters(EntropyMinLogitsProcessor, EM_INF_PARAMETERS)
