"""End to end in a vLLM engine on the default model (SmolLM2-135M-Instruct from em_hf's safetensors
cache), one engine for the module (start-up is 1-2 minutes on 2 CPU cores).

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so no spawned engine core under
pytest) with ``logprobs_mode="processed_logprobs"``: the returned logprobs are those of the
distribution actually sampled from, i.e. after EM-INF and the temperature."""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: make installs it")

from vllm import LLM, SamplingParams, TokensPrompt
from vllm.exceptions import VLLMValidationError

from em_hf.data.arithmetic import make_arithmetic_problems
from em_hf.generation.prompts import render_prompt
from em_hf.generation.vllm import EntropyMinVLLMProcessor
from em_hf.models import ensure_default_model_cache, load_default_model
from em_hf.ops import token_entropy

MAX_TOKENS = 32


@pytest.fixture
def entropy_backend():
    """One engine run per test (not one per backend, as the rest of tests/generation): the kernels
    em_hf dispatches to by default."""
    return "default"


@pytest.fixture(scope="module")
def hf_model():
    return load_default_model()


@pytest.fixture(scope="module")
def prompts(hf_model):
    _, tokenizer = hf_model
    problems = make_arithmetic_problems(12, seed=3)
    return [render_prompt(tokenizer, problem.messages) for problem in problems]


@pytest.fixture(scope="module")
def llm():
    saved = {key: os.environ.get(key) for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine = LLM(
        model=str(ensure_default_model_cache()),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        seed=0,
        logprobs_mode="processed_logprobs",
        # also loaded through the entry point: the duplicate instance stays inert
        logits_processors=[EntropyMinVLLMProcessor],
    )
    yield engine
    del engine
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def generate(llm, prompts, **params):
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(**params))
    return [output.outputs[0] for output in outputs]


def test_greedy_output_is_unchanged_by_em_inf(llm, prompts):
    plain = generate(llm, prompts, temperature=0.0, max_tokens=MAX_TOKENS)
    em = generate(llm, prompts, temperature=0.0, max_tokens=MAX_TOKENS, extra_args={"em_inf": {"n_steps": 3}})
    assert sum(len(c.token_ids) for c in plain) > 4 * len(prompts)  # the model does answer
    assert [list(c.token_ids) for c in em] == [list(c.token_ids) for c in plain]


def completion_entropy(hf_model, prompts, completions) -> torch.Tensor:
    """The model's own (temperature 1) token entropy at each generated position, by the HF model on
    the generated ids: the logits at index i are the distribution of token i + 1."""
    model, _ = hf_model
    values = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions, strict=True):
            ids = torch.tensor([list(prompt) + list(completion.token_ids)])
            logits = model(ids).logits[0, len(prompt) - 1 : ids.shape[1] - 1]
            values.append(token_entropy(logits.float()))
    return torch.cat(values)


def test_sampled_em_inf_is_finite_and_lowers_the_model_entropy(llm, prompts, hf_model):
    common = {"temperature": 1.0, "max_tokens": MAX_TOKENS, "logprobs": 0}
    seeds = range(len(prompts))
    plain = generate_seeded(llm, prompts, seeds, **common)
    em = generate_seeded(llm, prompts, seeds, **common, extra_args={"em_inf": {"n_steps": 3}})
    for completion in plain + em:
        assert completion.token_ids
        logprobs = [
            entry[token].logprob
            for entry, token in zip(completion.logprobs, completion.token_ids, strict=True)
        ]
        assert all(math.isfinite(value) for value in logprobs), logprobs
        assert math.isfinite(completion.cumulative_logprob)
    plain_entropy = completion_entropy(hf_model, prompts, plain)
    em_entropy = completion_entropy(hf_model, prompts, em)
    assert torch.isfinite(plain_entropy).all() and torch.isfinite(em_entropy).all()
    assert em_entropy.mean() < plain_entropy.mean(), (em_entropy.mean(), plain_entropy.mean())


def generate_seeded(llm, prompts, seeds, **params):
    """One request per prompt with its own seed (batches stay well under 40: larger seeded batches
    crash vLLM's CPU engine)."""
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    sampling = [SamplingParams(seed=seed, **params) for seed in seeds]
    return [output.outputs[0] for output in llm.generate(requests, sampling)]


def test_invalid_settings_are_refused_with_the_package_message(llm, prompts):
    with pytest.raises(VLLMValidationError, match=r"`n_steps` must be an integer >= 1, got 0"):
        generate(llm, prompts[:1], max_tokens=4, extra_args={"em_inf": {"n_steps": 0}})
