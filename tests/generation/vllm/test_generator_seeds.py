"""VLLMGenerator sends the per-prompt seeds it is given (the harness's per-item seeds) as the requests'
sampling seeds, so an item's vLLM answer does not depend on its batch either. The engine is a stand-in
that records the requests (no engine start-up); vLLM itself must be importable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from em_hf.generation.decoding import parse_method
from em_hf.generation.vllm import engine

pytest.importorskip("vllm", reason="vLLM is not installed: make installs it")


class _RecordingLLM:
    def __init__(self) -> None:
        self.seeds: list[int | None] = []

    def generate(self, prompts, params, use_tqdm=False):
        self.seeds += [p.seed for p in params]
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5, 1])]) for _ in prompts]


def test_the_given_seeds_are_the_requests_seeds(sharp_llama, word_tokenizer):
    prompts = ["Compute 1 + 2", "Compute 3 + 4", "Compute 5 + 6"]
    llm = _RecordingLLM()
    generate = engine.VLLMGenerator(llm)
    generate(sharp_llama, word_tokenizer, prompts, parse_method("sample"), seeds=[7, 8, 9], progress=False)
    assert llm.seeds == [7, 8, 9]
    generate(sharp_llama, word_tokenizer, prompts, parse_method("greedy"), seeds=[7, 8, 9], progress=False)
    assert llm.seeds[3:] == [None, None, None]  # greedy requests carry no seed
    with pytest.raises(ValueError, match="`seeds` has 1 entries for 3 prompts"):
        generate(sharp_llama, word_tokenizer, prompts, parse_method("sample"), seeds=[7], progress=False)
