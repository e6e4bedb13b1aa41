"""The vLLM processors built directly (no engine): per-row settings through vLLM's BatchUpdate
(rows added, removed, moved, swapped), rows compared with the transformers processors on the same
logits, validation messages, and the place vLLM's sampler calls them (before the temperature)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: make installs it")

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessors,
    MoveDirectionality,
)

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.generation.vllm import AdaptiveTemperatureVLLMProcessor, EntropyMinVLLMProcessor

UNI, SWAP = MoveDirectionality.UNIDIRECTIONAL, MoveDirectionality.SWAP
VOCAB = 300


def logits_for(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0]).repeat(math.ceil(batch / 6))[:batch]
    logits = torch.randn(batch, VOCAB, generator=generator) * scales[:, None]
    logits[:, -3:] = float("-inf")  # masked tokens, as vLLM's allowed-token / bad-word masks leave them
    return logits


class Batch:
    """Plain-Python model of vLLM's persistent batch: index -> the request's extra_args value (or
    None for a request without it), changed by the same BatchUpdate the processors receive."""

    def __init__(self, key: str):
        self.key, self.rows = key, {}

    def update(self, processors, batch_size, removed=(), added=(), moved=()):
        for index in removed:
            self.rows.pop(index, None)
        for index, value in added:
            self.rows[index] = value
        for a, b, direction in moved:
            a_value, b_value = self.rows.pop(a, "empty"), self.rows.pop(b, "empty")
            if a_value != "empty":
                self.rows[b] = a_value
            if direction == SWAP and b_value != "empty":
                self.rows[a] = b_value
        update = BatchUpdate(
            batch_size=batch_size,
            removed=sorted(removed, reverse=True),
            added=[(i, self.params(v), [1, 2], []) for i, v in added],
            moved=list(moved),
        )
        for processor in processors:
            processor.update_state(update)

    def params(self, value) -> SamplingParams:
        if value is None:
            return SamplingParams(temperature=0.1)
        return SamplingParams(extra_args={self.key: value})

    def expected(self, logits: torch.Tensor, reference) -> torch.Tensor:
        """Each row through the transformers processor built from that row's settings, alone."""
        out = logits.clone()
        for index, value in self.rows.items():
            if value is None:
                continue
            settings = {} if value is True else json.loads(value) if isinstance(value, str) else value
            out[index] = reference(**settings)(None, logits[index : index + 1].clone())[0]
        return out


EM_SCHEDULE = [
    # step 0: six requests, two without EM-INF, three different settings (one as a JSON string)
    {
        "batch_size": 6,
        "added": [
            (0, {}),
            (1, None),
            (2, {"n_steps": 5, "threshold": 0.1}),
            (3, True),
            (4, None),
            (5, '{"optimizer": "sgd", "lr": 0.5, "kl_weight": 0.0}'),
        ],
    },
    # step 1: a request finishes; the last row moves into its place (vLLM's condense)
    {"batch_size": 5, "removed": [1], "moved": [(5, 1, UNI)]},
    # step 2: two new requests, one replacing an EM-INF row; two rows swap
    {
        "batch_size": 6,
        "removed": [0],
        "added": [(0, {"n_steps": 2}), (5, None)],
        "moved": [(2, 4, SWAP)],
    },
    # step 3: the EM-INF requests finish; the two plain ones are condensed to the front
    {"batch_size": 2, "removed": [0, 1, 3, 4], "moved": [(5, 0, UNI), (2, 1, UNI)]},
]


def test_em_inf_rows_match_the_transformers_processor_through_batch_changes():
    processor = EntropyMinVLLMProcessor(None, torch.device("cpu"), False)
    batch = Batch("em_inf")
    for step, change in enumerate(EM_SCHEDULE):
        batch.update([processor], **change)
        size = change["batch_size"]
        logits = logits_for(size, seed=step)
        expected = batch.expected(logits, EntropyMinLogitsProcessor)
        out = processor.apply(logits.clone())
        for row in range(size):
            assert torch.equal(out[row], expected[row]), (step, row, batch.rows.get(row))
        changed = [row for row in range(size) if not torch.equal(out[row], logits[row])]
        active = [row for row, value in batch.rows.items() if value is not None and row < size]
        assert set(changed) <= set(active) and bool(changed) == bool(active), (step, changed, active)
        assert torch.isfinite(out[:, :-3]).all() and torch.isneginf(out[:, -3:]).all()


def test_adaptive_temperature_rows_match_the_transformers_warper():
    em = EntropyMinVLLMProcessor(None, torch.device("cpu"), False)
    adaptive = AdaptiveTemperatureVLLMProcessor(None, torch.device("cpu"), False)
    batch = Batch("adaptive_temperature")
    schedule = [
        {"batch_size": 4, "added": [(0, {"alpha": 0.5, "tol": 0.01}), (1, None), (2, True), (3, {})]},
        {"batch_size": 3, "removed": [0], "moved": [(3, 0, UNI)], "added": [(1, {"threshold": 0.1})]},
    ]
    for step, change in enumerate(schedule):
        batch.update([em, adaptive], **change)
        logits = logits_for(change["batch_size"], seed=10 + step)
        expected = batch.expected(logits, AdaptiveTemperatureLogitsWarper)
        out = adaptive.apply(logits.clone())
        assert torch.equal(out, expected), step
        # the EM-INF processor sees no request of its own: it returns its input, untouched
        assert em.apply(logits) is logits and em.active_rows() == {}


def test_no_active_row_means_no_work():
    processor = EntropyMinVLLMProcessor(None, torch.device("cpu"), False)
    Batch("em_inf").update([processor], batch_size=3, added=[(0, None), (1, None), (2, None)])
    logits = logits_for(3, seed=0)
    assert processor.apply(logits) is logits
    processor.update_state(None)
    assert processor.apply(logits) is logits


@pytest.mark.parametrize(
    ("value", "reference_kwargs"),
    [
        ({"n_steps": 0}, {"n_steps": 0}),
        ({"threshold": -1}, {"threshold": -1}),
        ({"optimizer": "rmsprop"}, {"optimizer": "rmsprop"}),
        ('{"lr": 0}', {"lr": 0}),
    ],
)
def test_em_inf_validation_has_the_transformers_messages(value, reference_kwargs):
    with pytest.raises(ValueError) as reference:
        EntropyMinLogitsProcessor(**reference_kwargs)
    with pytest.raises(ValueError) as ours:
        EntropyMinVLLMProcessor.validate_params(SamplingParams(extra_args={"em_inf": value}))
    assert str(ours.value) == str(reference.value)


def test_adaptive_temperature_validation_has_the_transformers_messages():
    with pytest.raises(ValueError) as reference:
        AdaptiveTemperatureLogitsWarper(tau_min=2.0)
    with pytest.raises(ValueError) as ours:
        AdaptiveTemperatureVLLMProcessor.validate_params(
            SamplingParams(extra_args={"adaptive_temperature": {"tau_min": 2.0}})
        )
    assert str(ours.value) == str(reference.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"steps": 3}, "unknown setting(s) ['steps']"),
        ("{not json", "must be a JSON object"),
        ([1, 2], "must be a mapping of settings"),
        (7, "must be a mapping of settings"),
    ],
)
def test_malformed_requests_are_refused(value, message):
    with pytest.raises(ValueError, match=r"extra_args\['em_inf'\]") as error:
        EntropyMinVLLMProcessor.validate_params(SamplingParams(extra_args={"em_inf": value}))
    assert message in str(error.value)


@pytest.mark.parametrize("value", [None, False, 0])
def test_requests_that_do_not_ask_are_ignored(value):
    params = SamplingParams(extra_args={"em_inf": value, "other": 1})
    assert EntropyMinVLLMProcessor.request_settings(params) is None
    assert EntropyMinVLLMProcessor.request_settings(SamplingParams()) is None


def test_both_processors_declare_they_must_see_raw_logits():
    for cls in (EntropyMinVLLMProcessor, AdaptiveTemperatureVLLMProcessor):
        processors = LogitsProcessors([cls(None, torch.device("cpu"), False)])
        assert processors.non_argmax_invariant and not processors.argmax_invariant


class RecordingEntropyMin(EntropyMinVLLMProcessor):
    """Records what vLLM's sampler hands to the processor and what it returns."""

    def apply(self, logits, ctx=None):
        self.seen = logits.clone()
        out = super().apply(logits, ctx)
        self.returned = out.clone()  # the sampler then divides `out` by the temperature in place
        return out


def test_vllm_sampler_applies_the_processor_to_raw_logits_before_temperature():
    """vLLM's own Sampler, as the engine calls it: a batch of a temperature-0.1 EM-INF request, a
    greedy EM-INF request and a plain temperature-0.1 request. The processor gets the model's raw
    logits (not divided by 0.1), and the sampled distribution is softmax(em_inf(raw) / 0.1)."""
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    processor = RecordingEntropyMin(None, torch.device("cpu"), False)
    batch = Batch("em_inf")
    batch.update([processor], batch_size=3, added=[(0, {}), (1, {}), (2, None)])
    raw = logits_for(3, seed=3)
    batch_size = raw.shape[0]
    metadata = SamplingMetadata(
        temperature=torch.tensor([0.1, 0.0, 0.1]),
        all_greedy=False,
        all_random=False,
        top_p=None,
        top_k=None,
        generators={},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch_size),
        presence_penalties=torch.zeros(batch_size),
        repetition_penalties=torch.ones(batch_size),
        output_token_ids=[[] for _ in range(batch_size)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors([processor]),
    )
    with torch.inference_mode():
        Sampler()(raw.clone(), metadata)
    assert torch.equal(processor.seen, raw)
    assert torch.equal(processor.returned, batch.expected(raw, EntropyMinLogitsProcessor))
    assert torch.equal(processor.returned[2], raw[2])


def test_v2_model_runner_interface():
    """The V2 runner keys requests by slot and maps logits rows to slots through ctx."""
    processor = EntropyMinVLLMProcessor(None, SimpleNamespace())
    assert processor.add_request(7, SamplingParams(extra_args={"em_inf": {"n_steps": 4}})) is True
    assert processor.add_request(3, SamplingParams()) is False
    assert processor.add_request(5, SamplingParams(extra_args={"em_inf": True})) is True
    logits = logits_for(3, seed=4)
    ctx = SimpleNamespace(
        idx_mapping_np=torch.tensor([3, 7, 5]).numpy(), expanded_idx_mapping=torch.tensor([3, 7, 5])
    )
    out = processor.apply(logits.clone(), ctx)
    assert torch.equal(out[0], logits[0])
    assert torch.equal(out[1], EntropyMinLogitsProcessor(n_steps=4)(None, logits[1:2])[0])
    assert torch.equal(out[2], EntropyMinLogitsProcessor()(None, logits[2:3])[0])
    # slot 7 recycled for a request without EM-INF
    processor.add_request(7, SamplingParams())
    only_plain = SimpleNamespace(idx_mapping_np=torch.tensor([3, 7]).numpy(), expanded_idx_mapping=None)
    assert torch.equal(processor.apply(logits[:2].clone(), only_plain), logits[:2])


def test_a_class_built_twice_for_one_engine_acts_once():
    """The entry point and `logits_processors=[cls]` both build the class for the same engine."""
    config = SimpleNamespace()
    first = EntropyMinVLLMProcessor(config, torch.device("cpu"), False)
    second = EntropyMinVLLMProcessor(config, torch.device("cpu"), False)
    other_engine = EntropyMinVLLMProcessor(SimpleNamespace(), torch.device("cpu"), False)
    update = BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, Batch("em_inf").params({}), [1], [])])
    for processor in (first, second, other_engine):
        processor.update_state(update)
    logits = logits_for(1, seed=5)
    assert not torch.equal(first.apply(logits.clone()), logits)
    assert second.apply(logits) is logits
    assert not torch.equal(other_engine.apply(logits.clone()), logits)
