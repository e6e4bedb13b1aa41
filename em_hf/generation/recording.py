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

    Parameters:
        (none): the recorder takes no arguments; ``entropies`` and :meth:`reset` are its interface.

    Examples:
        A tiny random model is almost uniform over its 18 tokens, so every entropy is about log(18):

        >>> from em_hf import TokenEntropyRecorder
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> inputs = tokenizer(["Compute 1 + 2 =", "2 + 2 ="], return_tensors="pt", padding=True)
        >>> recorder = TokenEntropyRecorder()
        >>> output = model.generate(
        ...     **inputs, logits_processor=[recorder], max_new_tokens=3, do_sample=False, pad_token_id=1
        ... )
        >>> recorder.entropies.round(decimals=2)  # [batch, new_tokens], nats
        tensor([[2.8900, 2.8900, 2.8900],
                [2.8900, 2.8900, 2.8900]])
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

    Parameters:
        completion_ids (`torch.Tensor` of shape `[batch, new_tokens]`):
            The part of ``generate``'s output after the prompt (what ``generate`` pads a finished row
            with is excluded because it comes after the EOS).
        eos_token_ids (`int`, `Iterable[int]` or `None`):
            The EOS id(s); `None` keeps every token.

    Returns:
        `torch.LongTensor` of the shape of ``completion_ids``.

    Examples:
        >>> import torch
        >>> from em_hf.generation.recording import completion_mask
        >>> completion_mask(torch.tensor([[5, 1, 1], [5, 6, 7]]), eos_token_ids=1)
        tensor([[1, 1, 0],
                [1, 1, 1]])
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
