"""Measure the model's token entropy along the trajectories ``generate`` produces."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LogitsProcessor

from em_hf.ops.entropy import token_entropy

__all__ = ["TokenEntropyRecorder", "completion_mask"]


class TokenEntropyRecorder(LogitsProcessor):
    """A pass-through processor that records H(softmax(scores)) of every row at every step.

    Put it FIRST in ``logits_processor=[...]``: it then sees the logits that the user processors
    see (the model's logits after generate's built-in processors such as repetition penalty, before
    EM-INF and before the sampling warpers). After ``generate``, ``entropies`` is a
    ``[batch, new_tokens]`` float32 tensor; combine it with :func:`completion_mask` to average over
    real generated tokens only. Call :meth:`reset` (or make a new recorder) before each ``generate``.
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def reset(self) -> None:
        self._steps = []

    @property
    def entropies(self) -> torch.Tensor:
        if not self._steps:
            raise RuntimeError("TokenEntropyRecorder has recorded nothing: pass it to `generate` first.")
        return torch.stack(self._steps, dim=1)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._steps.append(token_entropy(scores).float().cpu())
        return scores


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: int | Iterable[int] | None) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS of each row, 0 after it.

    ``completion_ids`` is the ``[batch, new_tokens]`` part of ``generate``'s output after the prompt
    (what ``generate`` pads a finished row with is excluded because it comes after the EOS).
    """
    if eos_token_ids is None:
        return torch.ones_like(completion_ids, dtype=torch.long)
    eos = torch.as_tensor(
        [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids),
        device=completion_ids.device,
    )
    is_eos = torch.isin(completion_ids, eos).long()
    # A token is kept when no EOS came strictly before it.
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos
    return (eos_before == 0).long()
