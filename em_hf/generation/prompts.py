"""The ONE prompt renderer of em_hf: a dataset prompt -> the token ids the model reads.

em_hf follows trl's dataset-format convention (``trl.data_utils.is_conversational``):

- a **standard** prompt is a string and is tokenized as it is, ``tokenizer(prompt)["input_ids"]``
  (the tokenizer's own special tokens, e.g. a BOS, included; no chat template is applied, even when
  the tokenizer has one);
- a **conversational** prompt is a list of chat messages ``{"role": ..., "content": ...}`` and goes
  through the chat template with the generation prompt,
  ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``.

These are exactly the ids trl's ``RLOOTrainer``/``GRPOTrainer`` feed the model, and the ids that
``EntropyMinTrainer`` trains on, ``select_by_pass_variance`` scores, the evaluation harness grades
and the demos run: the same dataset row gives the same input ids everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["Prompt", "is_conversational", "left_pad", "render_prompt", "render_prompts"]

Prompt = str | list[dict[str, Any]]
"""A dataset prompt: a string (standard) or a list of chat messages (conversational)."""


def is_conversational(prompt: Any) -> bool:
    """True for a list of chat messages (mappings with ``role`` and ``content``), False for a string;
    ``TypeError`` for anything else."""
    if isinstance(prompt, str):
        return False
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt)
    ):
        return True
    raise TypeError(
        "A prompt must be a string (standard format) or a non-empty list of chat messages "
        f"({{'role': ..., 'content': ...}}, conversational format), got {type(prompt).__name__}: "
        f"{str(prompt)[:80]!r}."
    )


def render_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of one prompt (module docstring: strings as they are, messages through the chat
    template with the generation prompt). Raises ``ValueError`` for messages when the tokenizer has no
    chat template and for a prompt that renders to zero tokens.

    Parameters:
        tokenizer (`PreTrainedTokenizerBase`):
            The model's tokenizer (a chat template is needed for conversational prompts only).
        prompt (`str` or `list[dict]`):
            A standard (string) or conversational (chat messages) prompt.

    Returns:
        `list[int]`: the token ids the model reads.

    Examples:
        >>> from em_hf.generation.prompts import render_prompt
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> _, tokenizer = tiny_llama_and_tokenizer()
        >>> render_prompt(tokenizer, "2 + 2 =")  # a string: no chat template
        [4, 12, 4, 13]
        >>> ids = render_prompt(tokenizer, [{"role": "user", "content": "2 + 2 ="}])
        >>> tokenizer.decode(ids)  # the tiny tokenizer's template: "<role> <content> ... assistant"
        'user 2 + 2 = assistant'
    """
    if is_conversational(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "The prompt is a list of chat messages but the tokenizer has no chat template; set "
                "`tokenizer.chat_template` or give plain-string prompts (used as they are)."
            )
        rendered = tokenizer.apply_chat_template(
            prompt, tokenize=True, add_generation_prompt=True, return_dict=True
        )
        ids = list(rendered["input_ids"])
    else:
        ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise ValueError(f"The prompt {str(prompt)[:80]!r} renders to zero tokens; give a non-empty prompt.")
    return ids


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """:func:`render_prompt` for each prompt."""
    return [render_prompt(tokenizer, prompt) for prompt in prompts]


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` [N, L] and ``attention_mask`` [N, L] (int64) of token-id rows, as
    decoder-only ``generate`` expects them."""
    if pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, which batched generation needs; set one, e.g. "
            "`tokenizer.pad_token = tokenizer.eos_token`."
        )
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[index, width - len(row) :] = 1
    return input_ids, attention_mask
