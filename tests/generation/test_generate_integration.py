"""The processors inside ``model.generate``: order relative to the warpers, batching, greedy."""

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor


class Spy:
    """Wraps a processor and records what it receives and returns at each step."""

    def __init__(self, processor):
        self.processor = processor
        self.inputs, self.outputs = [], []

    def __call__(self, input_ids, scores):
        self.inputs.append(scores.clone())
        out = self.processor(input_ids, scores)
        self.outputs.append(out.clone())
        return out


def prompt_ids(batch=3, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 90, (batch, length), generator=generator)


@pytest.mark.parametrize(
    "processor",
    [EntropyMinLogitsProcessor(threshold=0.0, n_steps=3), AdaptiveTemperatureLogitsWarper(threshold=0.0)],
    ids=["em-inf", "adaptive"],
)
def test_processor_sees_raw_logits_before_temperature_and_top_p(tiny_llama, processor):
    spy = Spy(processor)
    input_ids = prompt_ids()
    tiny_llama.generation_config.eos_token_id = None  # always 5 steps, no min-length EOS mask
    torch.manual_seed(0)
    out = tiny_llama.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        temperature=0.1,
        top_p=0.9,
        top_k=0,
        max_new_tokens=5,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([spy]),
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert len(spy.inputs) == len(out.logits) == 5
    temperature, top_p = TemperatureLogitsWarper(0.1), TopPLogitsWarper(0.9)
    for step in range(5):
        # The processor got the model's raw logits ...
        torch.testing.assert_close(spy.inputs[step], out.logits[step], atol=0, rtol=0)
        assert not torch.equal(spy.outputs[step], spy.inputs[step])
        # ... and generate's temperature and top-p warpers were applied to its output afterwards.
        expected = top_p(None, temperature(None, spy.outputs[step].clone()))
        torch.testing.assert_close(out.scores[step], expected, atol=0, rtol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_greedy_decoding_is_unchanged_by_em_inf(tiny_llama, optimizer):
    """Proposition 1: logit optimization keeps the top token, so greedy outputs are identical."""
    input_ids = prompt_ids(batch=4, seed=1)
    common = {
        "attention_mask": torch.ones_like(input_ids),
        "do_sample": False,
        "max_new_tokens": 8,
        "pad_token_id": 0,
    }
    plain = tiny_llama.generate(input_ids, **common)
    processor = Spy(EntropyMinLogitsProcessor(threshold=0.0, n_steps=5, optimizer=optimizer))
    with_em = tiny_llama.generate(input_ids, logits_processor=LogitsProcessorList([processor]), **common)
    assert torch.equal(plain, with_em)
    assert any(not torch.equal(i, o) for i, o in zip(processor.inputs, processor.outputs, strict=True))


def test_sampling_with_em_inf_lowers_the_sampling_entropy(tiny_llama):
    input_ids = prompt_ids(batch=4, seed=2)
    spy = Spy(EntropyMinLogitsProcessor(threshold=0.1, n_steps=5))
    torch.manual_seed(0)
    tiny_llama.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        top_k=0,
        max_new_tokens=6,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([spy]),
    )
    from em_hf.ops import token_entropy

    before = torch.stack([token_entropy(s) for s in spy.inputs])
    after = torch.stack([token_entropy(s) for s in spy.outputs])
    assert (after <= before + 1e-6).all()
    assert (after[before > 0.1] < before[before > 0.1]).all()
