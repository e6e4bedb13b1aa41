"""Shared fixtures: tiny randomly initialised models and tokenizers (see tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from em_hf.eval.benchmarks import find_benchmarks_dir
from tests.helpers import make_tiny_llama, make_word_tokenizer


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """Sharpened tiny Llama over 97 token ids; EOS 2, pad 0 (no tokenizer needed)."""
    return make_tiny_llama(vocab_size=97, hidden_size=32, eos_token_id=2, pad_token_id=0)


@pytest.fixture
def sharp_llama() -> LlamaForCausalLM:
    """Sharpened tiny Llama over the word tokenizer's 128 tokens; EOS = pad = 1."""
    return make_tiny_llama()


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    return make_word_tokenizer()


@pytest.fixture(name="make_word_tokenizer")
def make_word_tokenizer_fixture():
    """The tokenizer factory, for variants (no pad token, no chat template)."""
    return make_word_tokenizer


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The shared benchmark folder; tests that need it skip cleanly without it."""
    folder = find_benchmarks_dir()
    if folder is None or not (folder / "math500.json").is_file():
        pytest.skip("../shared/benchmarks is not available (set EM_HF_BENCHMARKS to run these tests)")
    return folder
