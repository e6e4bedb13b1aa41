"""A tiny random Llama and a word-level tokenizer built in memory, for the docstring examples only.

Nothing here is used by em_hf itself: the doctests of the trainers, rewards and decoding helpers
call :func:`tiny_llama_and_tokenizer` so that they run in seconds, offline, with no download. The
model is random, so what it generates is meaningless; only shapes and the code path are real.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_WORDS", "tiny_llama_and_tokenizer"]

TINY_WORDS = ["<unk>", "<eos>", *(str(i) for i in range(10)), "+", "=", "?", "Compute", "user", "assistant"]
"""The vocabulary of the tiny tokenizer (id = position); ``<eos>`` (id 1) is the EOS and pad token."""

_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def tiny_llama_and_tokenizer(seed: int = 0) -> tuple[Any, Any]:
    """A seeded random ``LlamaForCausalLM`` (hidden size 16, 1 layer, 2 heads) and its tokenizer.

    For examples and doctests only: the weights are random.

    Parameters:
        seed (`int`, *optional*, defaults to `0`):
            Passed to ``torch.manual_seed`` before the weights are initialized, so two calls with the
            same seed give the same model.

    Returns:
        `tuple`: ``(model, tokenizer)``. The model is in eval mode; the tokenizer is a
        ``PreTrainedTokenizerFast`` over :data:`TINY_WORDS` (whitespace split, digits one by one),
        pads on the left with ``<eos>`` and has a one-line chat template.

    Examples:
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> tokenizer("Compute 12 + 3 =")["input_ids"]
        [15, 3, 4, 12, 5, 13]
        >>> model.config.vocab_size == len(tokenizer)
        True
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    special = {"unk_token": "<unk>", "eos_token": "<eos>", "pad_token": "<eos>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **special)
    tokenizer.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(seed)
    sizes = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    ids = {"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 1}
    config = LlamaConfig(vocab_size=len(TINY_WORDS), max_position_embeddings=64, **sizes, **ids)
    return LlamaForCausalLM(config).eval(), tokenizer
