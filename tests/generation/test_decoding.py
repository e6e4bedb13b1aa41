"""Decoding methods written as NAME[:key=value,...]: parsing, validation and generate() settings."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.generation.decoding import DecodingMethod, parse_method


def test_greedy_is_argmax_decoding_without_processors():
    method = parse_method("greedy")
    assert method.kind == "greedy"
    assert method.name == "greedy"
    assert not method.do_sample
    assert method.logits_processors() == []
    assert method.generation_kwargs() == {"do_sample": False}


def test_plain_sample_has_no_filters():
    method = parse_method("sample")
    assert method.kind == "sample"
    assert method.do_sample
    assert method.logits_processors() == []
    # top_k 0 means "no top-k filter" (generate's own default would be 50).
    assert method.generation_kwargs() == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


def test_sample_with_temperature_and_top_p():
    method = parse_method("sample:t=0.1,top_p=0.9")
    assert method.kind == "sample"
    assert method.temperature == pytest.approx(0.1)
    assert method.top_p == pytest.approx(0.9)
    assert method.top_k == 0
    assert method.name == "sample:t=0.1,top_p=0.9"
    assert method.logits_processors() == []
    kwargs = method.generation_kwargs()
    assert kwargs["do_sample"] is True
    assert kwargs["temperature"] == pytest.approx(0.1)
    assert kwargs["top_p"] == pytest.approx(0.9)


def test_em_inf_options_go_to_the_processor_and_t_to_sampling():
    method = parse_method("em-inf:t=0.1,n_steps=5,threshold=0.2")
    assert method.kind == "em-inf"
    assert method.do_sample
    assert method.temperature == pytest.approx(0.1)
    assert method.processor_kwargs == {"n_steps": 5, "threshold": 0.2}
    processors = method.logits_processors()
    assert len(processors) == 1
    processor = processors[0]
    assert isinstance(processor, EntropyMinLogitsProcessor)
    assert processor.n_steps == 5
    assert isinstance(processor.n_steps, int)
    assert processor.threshold == pytest.approx(0.2)
    # Options not given keep the processor's defaults.
    default = EntropyMinLogitsProcessor()
    assert processor.lr == default.lr
    assert processor.kl_weight == default.kl_weight
    assert processor.optimizer == default.optimizer
    assert method.generation_kwargs()["temperature"] == pytest.approx(0.1)


def test_em_inf_string_option():
    processor = parse_method("em-inf:optimizer=sgd,lr=0.5").logits_processors()[0]
    assert processor.optimizer == "sgd"
    assert processor.lr == pytest.approx(0.5)


def test_processors_are_fresh_per_call():
    """A stateful processor must not be shared between two generate() calls."""
    method = parse_method("em-inf")
    first, second = method.logits_processors()[0], method.logits_processors()[0]
    assert first is not second


def test_adaptive_alpha():
    method = parse_method("adaptive:alpha=0.5")
    assert method.kind == "adaptive"
    assert method.temperature == 1.0
    (processor,) = method.logits_processors()
    assert isinstance(processor, AdaptiveTemperatureLogitsWarper)
    assert processor.alpha == pytest.approx(0.5)
    assert processor.threshold == AdaptiveTemperatureLogitsWarper().threshold


def test_name_is_normalised():
    assert parse_method("  EM_INF:t=0.1 ").kind == "em-inf"
    assert parse_method("Greedy").kind == "greedy"
    assert parse_method("em-inf:t=0.1").name == "em-inf:t=0.1"


def test_top_k_option():
    method = parse_method("sample:top_k=5")
    assert method.top_k == 5
    assert method.generation_kwargs()["top_k"] == 5


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("beam", r"Unknown decoding method 'beam'.*choose from"),
        ("", r"Unknown decoding method"),
        ("em-inf:foo=1", r"Bad option in decoding method 'em-inf:foo=1'.*foo"),
        ("adaptive:beta=0.1", r"Bad option.*beta"),
        ("em-inf:n_steps=0", r"n_steps.*>= 1"),
        ("em-inf:n_steps=2.5", r"n_steps"),
        ("em-inf:threshold=-1", r"threshold"),
        ("adaptive:alpha=1.5", r"alpha"),
        ("greedy:t=0.5", r"`greedy` takes no sampling options.*greedy:t=0.5"),
        ("greedy:threshold=0.2", r"`greedy` takes no options"),
        ("sample:t", r"Option 't' of 'sample:t' must be written key=value"),
        ("em-inf:t=0.1,n_steps", r"Option 'n_steps'.*key=value"),
        ("sample:t=0", r"t \(sampling temperature\)"),
        ("sample:t=-1", r"t \(sampling temperature\)"),
        ("sample:top_p=0", r"top_p"),
        ("sample:top_p=1.5", r"top_p"),
        ("sample:top_k=-1", r"top_k.*>= 0"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_method(spec)


def test_decoding_method_rejects_unknown_kind():
    with pytest.raises(ValueError, match="Unknown decoding method 'beam'"):
        DecodingMethod(kind="beam")


def _distinct_first_tokens(model, method: DecodingMethod, rows: int = 400) -> int:
    config = GenerationConfig(max_new_tokens=1, pad_token_id=1, eos_token_id=1, **method.generation_kwargs())
    input_ids = torch.full((rows, 3), 5, dtype=torch.long)
    torch.manual_seed(0)
    with torch.no_grad():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
        )
    return len(set(output[:, -1].tolist()))


def test_generation_kwargs_sample_from_the_whole_vocabulary(sharp_llama):
    """``sample`` must not inherit generate's default top-k of 50; ``top_k=50`` must filter."""
    with torch.no_grad():  # an almost uniform (but tie-free) next-token distribution over 128 tokens
        sharp_llama.lm_head.weight.mul_(1e-3)
    assert _distinct_first_tokens(sharp_llama, parse_method("sample")) > 60
    assert _distinct_first_tokens(sharp_llama, parse_method("sample:top_k=50")) <= 50
    assert _distinct_first_tokens(sharp_llama, parse_method("greedy")) == 1
