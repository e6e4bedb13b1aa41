"""The vLLM engine of the harness (``em-hf eval --engine vllm``): the DecodingMethod -> SamplingParams
mapping (no engine), then one vLLM engine on the default model for the whole module (start-up is 1-2
minutes on a CPU): greedy completions equal those of ``generate``, ``items.jsonl`` has the same fields
with either engine, self-consistency and refinement run with consistent tokens and FLOPs."""

from __future__ import annotations

import json
import os

import pytest

try:
    import vllm  # noqa: F401
except Exception:  # an ImportError, or a broken install (e.g. torchvision against the CPU torch)
    pytest.skip("vLLM is not installed: make installs it", allow_module_level=True)

from em_hf.generation.decoding import parse_method
from em_hf.generation.vllm import engine


@pytest.fixture(autouse=True)
def entropy_backend() -> str:
    """Once, on the default entropy backend (overrides the package-wide cpp/torch parametrization: both
    backends of the entropy recomputation are tested in test_engine_no_vllm.py, without an engine)."""
    return "default"


# ---------------------------------------------------------------------------------------------------
# DecodingMethod -> SamplingParams (no engine)


def test_greedy_is_temperature_zero_without_seed_and_stops_at_the_given_eos_only():
    params = engine.sampling_params(parse_method("greedy"), max_new_tokens=7, stop_token_ids=[2, 5], seed=3)
    assert params.temperature == 0.0 and params.seed is None
    assert params.max_tokens == 7 and params.n == 1
    assert params.ignore_eos and sorted(params.stop_token_ids) == [2, 5]
    assert params.top_p == 1.0 and params.top_k in (0, -1) and params.repetition_penalty == 1.0
    assert not params.extra_args


def test_sampling_settings_map_one_to_one():
    method = parse_method("sample:t=0.7,top_p=0.9,top_k=5")
    kwargs = method.generation_kwargs()
    params = engine.sampling_params(method, max_new_tokens=4, stop_token_ids=[2], seed=11)
    assert params.temperature == pytest.approx(kwargs["temperature"])
    assert params.top_p == pytest.approx(kwargs["top_p"]) and params.top_k == kwargs["top_k"] == 5
    assert params.seed == 11 and not params.extra_args
    # Plain sampling: no filters, as generate's top_k=0 / top_p=1.0.
    plain = engine.sampling_params(parse_method("sc:4"), max_new_tokens=4, seed=1)
    assert plain.temperature == 1.0 and plain.top_p == 1.0 and plain.top_k in (0, -1) and plain.n == 1


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("em-inf:t=0.5,n_steps=3,threshold=0.2", "em_inf"),
        ("em-inf-sc:4,t=0.5,lr=0.05", "em_inf"),
        ("adaptive:alpha=0.5", "adaptive_temperature"),
        ("adaptive-refine:2", "adaptive_temperature"),
    ],
)
def test_processor_methods_carry_their_kwargs_in_extra_args(spec, key):
    method = parse_method(spec)
    params = engine.sampling_params(method, max_new_tokens=4, seed=0)
    assert params.extra_args == {key: method.processor_kwargs}
    assert params.temperature == pytest.approx(method.temperature)


# ---------------------------------------------------------------------------------------------------
# One engine on the default model


@pytest.fixture(scope="module")
def default_model():
    from em_hf.models import load_default_model

    return load_default_model()


@pytest.fixture(scope="module")
def llm():
    from em_hf.models import ensure_default_model_cache

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    llm = engine.load_vllm(
        str(ensure_default_model_cache()), dtype="float32", enforce_eager=True, max_model_len=512, seed=0
    )
    yield llm
    del llm


@pytest.fixture(scope="module")
def arithmetic_items():
    from em_hf.eval.benchmarks import load_benchmark

    return load_benchmark("arithmetic", limit=16)


@pytest.mark.slow
def test_greedy_completions_equal_those_of_generate(llm, default_model, arithmetic_items):
    from em_hf.generation.batched import generate_completions

    model, tokenizer = default_model
    prompts = [item.prompt for item in arithmetic_items]
    method = parse_method("greedy")
    hf, _ = generate_completions(model, tokenizer, prompts, method, max_new_tokens=24, progress=False)
    ours, _ = engine.VLLMGenerator(llm)(
        model, tokenizer, prompts, method, max_new_tokens=24, batch_size=16, progress=False
    )
    same = [
        (a.text, a.num_tokens, a.prompt_tokens) == (b.text, b.num_tokens, b.prompt_tokens)
        for a, b in zip(ours, hf, strict=True)
    ]
    # float32 on both sides: all agreed here (16 of 16, and 40 of 40 in a longer check); a near-tie
    # between two tokens could flip one, hence the allowance of one.
    assert sum(same) >= len(same) - 1, [(a, b) for a, b, s in zip(ours, hf, same, strict=True) if not s]
    for a, b, s in zip(ours, hf, same, strict=True):
        if s:  # the recomputed entropy is the recorder's up to float32 rounding
            assert a.mean_entropy == pytest.approx(b.mean_entropy, abs=1e-4)
    assert any(c.num_tokens < 24 for c in ours)  # some stopped at EOS, counted through it


@pytest.mark.slow
def test_sampled_completions_are_reproducible_and_seed_dependent(llm, default_model, arithmetic_items):
    model, tokenizer = default_model
    prompts = [item.prompt for item in arithmetic_items[:8]]
    generate = engine.VLLMGenerator(llm)
    kwargs = dict(max_new_tokens=12, progress=False)
    first, _ = generate(model, tokenizer, prompts, parse_method("sample"), seed=1, **kwargs)
    again, _ = generate(model, tokenizer, prompts, parse_method("sample"), seed=1, **kwargs)
    other, _ = generate(model, tokenizer, prompts, parse_method("sample"), seed=2, **kwargs)
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]


@pytest.mark.slow
def test_cli_items_have_the_same_fields_with_either_engine(llm, tmp_path, monkeypatch):
    from em_hf.cli import main
    from em_hf.eval.runner import read_records

    monkeypatch.setattr(engine, "load_vllm", lambda *args, **kwargs: llm)  # the module's engine
    common = [
        "eval",
        "--benchmark",
        "arithmetic",
        "--limit",
        "4",
        "--methods",
        "greedy",
        "--no-plot",
        "--no-progress",
        "--max-new-tokens",
        "16",
    ]
    assert main([*common, "--out", str(tmp_path / "hf")]) == 0
    assert main([*common, "--engine", "vllm", "--out", str(tmp_path / "vllm")]) == 0
    hf, ours = read_records(tmp_path / "hf/items.jsonl"), read_records(tmp_path / "vllm/items.jsonl")
    assert len(hf) == len(ours) == 4
    assert [sorted(r) for r in ours] == [sorted(r) for r in hf]
    hf_config = json.loads((tmp_path / "hf/config.json").read_text())
    config = json.loads((tmp_path / "vllm/config.json").read_text())
    assert (hf_config["engine"], config["engine"]) == ("hf", "vllm")
    assert config["num_parameters"] == hf_config["num_parameters"]
    for a, b in zip(ours, hf, strict=True):
        assert (a["item_id"], a["prompt_tokens"]) == (b["item_id"], b["prompt_tokens"])
    # Resuming the vLLM run's folder with the transformers engine is refused.
    assert main([*common, "--out", str(tmp_path / "vllm")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["sc:2", "refine:2"])
def test_self_consistency_and_refinement_run_with_consistent_accounting(
    llm, default_model, arithmetic_items, spec
):
    from em_hf.eval.methods import run_items

    model, tokenizer = default_model
    items = arithmetic_items[:4]
    results = run_items(
        model, tokenizer, items, parse_method(spec), max_new_tokens=12, generator=engine.VLLMGenerator(llm)
    )
    params = model.num_parameters()
    for result in results:
        assert result.trajectories == 2 and 2 <= result.tokens <= 24
        assert result.flops == 2.0 * params * (result.prompt_tokens + result.tokens)
        assert len(result.answers) == 2 and 0.0 < result.mean_entropy < 11.0
    if spec == "refine:2":  # round 2 re-reads the question, round 1's answer and the instruction
        single = run_items(
            model,
            tokenizer,
            items,
            parse_method("greedy"),
            max_new_tokens=12,
            generator=engine.VLLMGenerator(llm),
        )
        assert all(r.prompt_tokens > 2 * s.prompt_tokens for r, s in zip(results, single, strict=True))
