"""Fixtures for the eval tests: a tiny sharpened Llama and a small word-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORD_VOCAB_SIZE = 128
WORD_EOS_ID = 1
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
_WORDS = ["<unk>", "<eos>", *(str(i) for i in range(10)), *"+-.,=?:"]
_WORDS += ["Compute", "Reply", "with", "just", "the", "number", "user", "assistant", "answer", "is"]
_WORDS += [f"w{i}" for i in range(WORD_VOCAB_SIZE - len(_WORDS))]


def build_word_tokenizer(pad: bool = True, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over 128 tokens (digits split one by one); EOS ``<eos>`` (id 1)."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    kwargs = {"pad_token": "<eos>"} if pad else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", padding_side="left", **kwargs
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_sharp_llama(seed: int = 0, sharpen: float = 40.0) -> LlamaForCausalLM:
    """A seeded 2-layer Llama over the word vocabulary with its LM head scaled by ``sharpen`` so that
    token entropies differ strongly between positions (SPEC.md, "Testing hint")."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=WORD_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=None,
        eos_token_id=WORD_EOS_ID,
        pad_token_id=WORD_EOS_ID,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval()


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer()


@pytest.fixture
def sharp_llama() -> LlamaForCausalLM:
    return build_sharp_llama()


@pytest.fixture
def make_word_tokenizer():
    """The tokenizer factory, for variants (no pad token, no chat template)."""
    return build_word_tokenizer
