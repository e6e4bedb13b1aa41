"""What the EM-INF processor and the adaptive-temperature warper do under beam search (``num_beams > 1``):
``generate`` hands them each beam's log-probabilities, they process every beam's row on its own, and the
running beam scores add up what they return, so the beams, and the output, can change (greedy decoding,
whose argmax they keep, does not)."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor

from em_hf import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from tests.helpers import make_tiny_llama

PROCESSORS = {
    "em-inf": lambda: EntropyMinLogitsProcessor(threshold=0.1, n_steps=5, lr=0.5),
    "adaptive": lambda: AdaptiveTemperatureLogitsWarper(alpha=0.5, threshold=0.1, tol=0.01),
}


class _Recording(LogitsProcessor):
    def __init__(self, inner: LogitsProcessor) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, input_ids, scores):
        out = self.inner(input_ids, scores)
        self.calls.append((scores.clone(), out.clone()))
        return out


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=97, hidden_size=32, sharpen=2.0, eos_token_id=2, pad_token_id=0)


def _prompts(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 97, (n, 5), generator=generator)


@pytest.mark.parametrize("num_beams", [2, 3])
@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_each_beam_row_is_processed_on_its_own(model, name, num_beams):
    recording = _Recording(PROCESSORS[name]())
    out = model.generate(
        _prompts(2), num_beams=num_beams, do_sample=False, max_new_tokens=4, logits_processor=[recording],
        renormalize_logits=True, output_scores=True, return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    assert len(recording.calls) == len(out.scores) >= 1
    for (scores, processed), stored in zip(recording.calls, out.scores, strict=True):
        assert scores.shape == (2 * num_beams, 97)  # one row per beam
        torch.testing.assert_close(scores.logsumexp(-1), torch.zeros(2 * num_beams))  # log-probabilities
        for row in range(scores.shape[0]):  # a beam's row does not depend on the other beams
            torch.testing.assert_close(processed[row : row + 1], recording.inner(None, scores[row : row + 1]))
        # renormalize_logits=True: the beam scores add log-probabilities of the processed distributions
        torch.testing.assert_close(stored, torch.log_softmax(processed, dim=-1))


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_beam_search_output_can_change_while_greedy_output_does_not(model, name):
    prompts = _prompts(16)
    common = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    greedy = model.generate(prompts, **common)
    assert torch.equal(model.generate(prompts, logits_processor=[PROCESSORS[name]()], **common), greedy)
    changed = 0
    for num_beams in (2, 3):
        plain = model.generate(prompts, num_beams=num_beams, **common)
        processed = model.generate(
            prompts, num_beams=num_beams, logits_processor=[PROCESSORS[name]()], **common
        )
        changed += int((plain != processed).any(dim=1).sum())
    assert changed > 0  # the processors change the beams' scores, so beams (and outputs) can change
