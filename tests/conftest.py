"""Shared fixtures: tiny randomly initialised models built from a config (no files, no network)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_VOCAB = 97


def make_tiny_llama(seed: int = 0, vocab_size: int = TINY_VOCAB, sharpen: float = 40.0) -> LlamaForCausalLM:
    """A 2-layer Llama with its LM head scaled by ``sharpen``: a random model is otherwise almost
    uniform (entropy ~ log V everywhere), which hides position and masking mistakes (SPEC.md)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()
