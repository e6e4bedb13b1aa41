"""Batched generation with a decoding method: texts, token counts and the recorded token entropy.

The reference values are computed without ``generate``: a greedy loop over full forward passes on
each prompt alone (no padding), then one forward pass over prompt + completion whose logits at the
positions that predicted each generated token give the entropies.
"""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.generation.batched import Completion, CompletionGenerator, GeneratedChunk, generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.generation.prompts import render_prompts

# Different lengths, so that a batch is left-padded.
PROMPTS = [
    "Compute 1 + 2 .",
    "the answer is 7 w3 w9 w40 w12 w7 w8",
    "w5",
    "Reply with just the number : 3 - 9 .",
]
MAX_NEW = 10


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def _reference(model, tokenizer, prompt: str, eos_ids: set[int], max_new_tokens: int, shift: int = 0):
    """(generated ids through the first EOS, mean entropy at the predicting positions)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    ids = prompt_ids
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(ids).logits[0, -1].argmax())
            generated.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
            if next_id in eos_ids:
                break
        logits = model(ids).logits[0]
    start = prompt_ids.shape[1] - 1 + shift  # the logits at position i predict token i + 1
    entropies = _entropy(logits[start : start + len(generated)])
    return generated, float(entropies.mean())


def _greedy_trajectory(model, tokenizer, prompt: str, steps: int) -> list[int]:
    return _reference(model, tokenizer, prompt, set(), steps)[0]


@pytest.fixture
def stop_token(sharp_llama, word_tokenizer) -> int:
    """A second EOS id: a token the greedy trajectory of PROMPTS[0] emits at step 4 and not before,
    so that some rows stop early, inside the batch, and others run to ``max_new_tokens``."""
    trajectory = _greedy_trajectory(sharp_llama, word_tokenizer, PROMPTS[0], MAX_NEW)
    for step in range(3, MAX_NEW - 1):
        token = trajectory[step]
        if token not in trajectory[:step] and token != word_tokenizer.eos_token_id:
            return token
    pytest.fail(f"no usable stop token in {trajectory}")


@pytest.mark.parametrize("batch_size", [4, 3, 1])
def test_greedy_entropy_and_length_match_an_independent_recomputation(
    sharp_llama, word_tokenizer, stop_token, batch_size
):
    eos_ids = [word_tokenizer.eos_token_id, stop_token]
    sharp_llama.generation_config.eos_token_id = eos_ids  # several EOS ids
    completions, seconds = generate_completions(
        sharp_llama,
        word_tokenizer,
        PROMPTS,
        parse_method("greedy"),
        max_new_tokens=MAX_NEW,
        batch_size=batch_size,
        progress=False,
    )
    assert seconds >= 0
    assert len(completions) == len(PROMPTS)
    assert all(isinstance(c, Completion) for c in completions)
    lengths = []
    for prompt, completion in zip(PROMPTS, completions, strict=True):
        generated, mean_entropy = _reference(sharp_llama, word_tokenizer, prompt, set(eos_ids), MAX_NEW)
        lengths.append(len(generated))
        assert completion.num_tokens == len(generated), prompt
        assert completion.mean_entropy == pytest.approx(mean_entropy, abs=1e-4), prompt
        assert completion.text == word_tokenizer.decode(generated, skip_special_tokens=True)
        # The check is sensitive: a one-position shift gives a clearly different mean.
        _, shifted = _reference(sharp_llama, word_tokenizer, prompt, set(eos_ids), MAX_NEW, shift=1)
        assert abs(shifted - mean_entropy) > 1e-2
    # The set-up exercises both an early stop and a row running to the limit.
    assert min(lengths) < MAX_NEW
    assert max(lengths) == MAX_NEW


def test_entropy_is_recorded_before_the_method_processor(sharp_llama, word_tokenizer):
    """EM-INF with SGD never changes the argmax and t=1e-4 samples the argmax, so the trajectory is
    the greedy one; the recorded entropy must be the MODEL's (before EM-INF lowers it)."""
    method = parse_method("em-inf:t=0.0001,optimizer=sgd,threshold=0.0,n_steps=5,lr=1.0")
    completions, _ = generate_completions(
        sharp_llama, word_tokenizer, PROMPTS, method, max_new_tokens=6, batch_size=4, progress=False
    )
    eos = {word_tokenizer.eos_token_id}
    for prompt, completion in zip(PROMPTS, completions, strict=True):
        generated, mean_entropy = _reference(sharp_llama, word_tokenizer, prompt, eos, 6)
        assert completion.text == word_tokenizer.decode(generated, skip_special_tokens=True)
        assert completion.mean_entropy == pytest.approx(mean_entropy, abs=1e-4)


def test_eos_defaults_to_the_tokenizer_eos(sharp_llama, word_tokenizer):
    """Without an EOS in the model's generation config, the tokenizer's EOS ends a completion."""
    trajectory = _greedy_trajectory(sharp_llama, word_tokenizer, PROMPTS[0], MAX_NEW)
    word_tokenizer.add_special_tokens({"eos_token": word_tokenizer.convert_ids_to_tokens(trajectory[2])})
    sharp_llama.generation_config.eos_token_id = None
    (completion,), _ = generate_completions(
        sharp_llama,
        word_tokenizer,
        PROMPTS[:1],
        parse_method("greedy"),
        max_new_tokens=MAX_NEW,
        progress=False,
    )
    assert completion.num_tokens == trajectory.index(trajectory[2]) + 1


def test_sampling_is_reproducible_for_a_seed(sharp_llama, word_tokenizer):
    method = parse_method("sample")
    run = [
        generate_completions(
            sharp_llama, word_tokenizer, PROMPTS, method, max_new_tokens=8, seed=seed, progress=False
        )[0]
        for seed in (3, 3)
    ]
    assert run[0] == run[1]
    for completion in run[0]:
        assert 1 <= completion.num_tokens <= 8
        assert 0.0 <= completion.mean_entropy <= math.log(128) + 1e-6


def test_chat_messages_go_through_the_chat_template(sharp_llama, word_tokenizer):
    messages = [{"role": "user", "content": "Compute 1 + 2 ."}]
    (ids,) = render_prompts(word_tokenizer, [messages])
    text = word_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == word_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("user : Compute 1 + 2 .")
    assert text.rstrip().endswith("assistant :")
    assert render_prompts(word_tokenizer, ["plain"]) == [word_tokenizer("plain")["input_ids"]]
    # A chat prompt and its rendered string give the same completion.
    from_messages, _ = generate_completions(
        sharp_llama, word_tokenizer, [messages], parse_method("greedy"), max_new_tokens=5, progress=False
    )
    from_text, _ = generate_completions(
        sharp_llama, word_tokenizer, [text], parse_method("greedy"), max_new_tokens=5, progress=False
    )
    assert from_messages == from_text


def test_empty_prompts_are_rejected(sharp_llama, word_tokenizer):
    with pytest.raises(ValueError, match="`prompts` is empty"):
        generate_completions(sharp_llama, word_tokenizer, [], parse_method("greedy"), progress=False)


def test_tokenizer_without_pad_token_is_rejected(sharp_llama, make_word_tokenizer):
    tokenizer = make_word_tokenizer(pad=False)
    assert tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match=r"no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        generate_completions(sharp_llama, tokenizer, ["w5"], parse_method("greedy"), progress=False)


def test_chat_prompts_need_a_chat_template(sharp_llama, make_word_tokenizer):
    tokenizer = make_word_tokenizer(chat_template=False)
    with pytest.raises(ValueError, match="no chat template"):
        generate_completions(
            sharp_llama,
            tokenizer,
            [[{"role": "user", "content": "hi"}]],
            parse_method("greedy"),
            progress=False,
        )
    with pytest.raises(ValueError, match="no chat template"):
        render_prompts(tokenizer, ["fine", [{"role": "user", "content": "hi"}]])


class _EchoLengths(CompletionGenerator):
    """A backend that 'generates' each prompt's length as text, recording the chunks it was given."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int]] = []
        self.plans: list[dict] = []

    def chunk_size(self, method, batch_size: int) -> int:
        return min(batch_size, 3)

    def prepare(self, model, tokenizer, method, call):
        return {"offset": call.seed, "num_prompts": call.num_prompts}

    def generate_chunk(self, model, tokenizer, chunk, begin, plan) -> GeneratedChunk:
        self.chunks.append((begin, len(chunk)))
        self.plans.append(plan)
        return GeneratedChunk(
            texts=[str(len(row) + plan["offset"]) for row in chunk],
            num_tokens=[1] * len(chunk),
            mean_entropies=[0.5] * len(chunk),
        )


def test_a_backend_gets_rendered_chunks_and_returns_completions_in_prompt_order(sharp_llama, word_tokenizer):
    prompts = PROMPTS * 2  # 8 prompts: chunks of 3, 3, 2
    backend = _EchoLengths()
    completions, seconds = backend(
        sharp_llama, word_tokenizer, prompts, parse_method("greedy"), batch_size=5, seed=100, progress=False
    )
    rows = render_prompts(word_tokenizer, prompts)
    assert backend.chunks == [(0, 3), (3, 3), (6, 2)]
    assert [c.text for c in completions] == [str(len(r) + 100) for r in rows]
    assert backend.plans == [{"offset": 100, "num_prompts": 8}] * 3
    assert [c.prompt_tokens for c in completions] == [len(r) for r in rows]
    assert seconds >= sum(c.seconds for c in completions) * 0.99


def test_a_backend_that_implements_nothing_names_the_missing_method(sharp_llama, word_tokenizer):
    with pytest.raises(NotImplementedError, match="must implement `prepare`"):
        CompletionGenerator()(sharp_llama, word_tokenizer, ["w5"], parse_method("greedy"), progress=False)
