"""Per-row seeded sampling: a row's draws follow softmax(scores) and do not depend on its batch."""

from __future__ import annotations

import pytest
import torch

from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.generation.sampling import SeededRowSampler, item_seed
from tests.helpers import make_tiny_llama

PROMPTS = [f"Compute {a} + {b}" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 2)]]


def test_draws_follow_the_row_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    scores = probs.log().expand(20000, 4)
    seeds = [item_seed(0, "bench", str(i), 0) for i in range(20000)]
    drawn = SeededRowSampler(seeds)(None, scores.clone())
    assert torch.isneginf(drawn).sum(dim=1).eq(3).all() and drawn.max(dim=1).values.eq(0).all()
    frequencies = torch.bincount(drawn.argmax(dim=1), minlength=4) / 20000
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)  # 4+ standard errors


def test_a_row_draws_the_same_in_any_batch():
    sampler = SeededRowSampler([11, 12, 13])
    scores = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    steps = [sampler(None, scores).argmax(dim=1) for _ in range(5)]  # the stream advances step by step
    alone = SeededRowSampler([13])
    assert [int(s[2]) for s in steps] == [int(alone(None, scores[2:]).argmax()) for _ in range(5)]
    with pytest.raises(ValueError, match="3 seeds for 2 rows"):
        sampler(None, scores[:2])


@pytest.mark.parametrize("spec", ["sample", "sample:t=0.7,top_k=20,top_p=0.9", "em-inf:t=0.5", "adaptive"])
def test_completions_do_not_depend_on_batch_size_or_order(word_tokenizer, spec):
    model = make_tiny_llama(sharpen=1.0)  # near uniform: samples differ
    method = parse_method(spec)
    seeds = [item_seed(0, "arithmetic", prompt, 0) for prompt in PROMPTS]
    run = dict(max_new_tokens=4, progress=False)
    together, _ = generate_completions(
        model, word_tokenizer, PROMPTS, method, batch_size=6, seeds=seeds, **run
    )
    order = [4, 1, 5, 0, 3, 2]
    shuffled, _ = generate_completions(
        model,
        word_tokenizer,
        [PROMPTS[i] for i in order],
        method,
        batch_size=2,
        seeds=[seeds[i] for i in order],
        **run,
    )
    assert [c.text for c in shuffled] == [together[i].text for i in order]
    assert len({c.text for c in together}) > 1
    with pytest.raises(ValueError, match="`seeds` has 2 entries for 6 prompts"):
        generate_completions(model, word_tokenizer, PROMPTS, method, seeds=seeds[:2], **run)


def test_top_k_one_is_greedy(word_tokenizer):
    model = make_tiny_llama(sharpen=1.0)
    seeds = list(range(len(PROMPTS)))
    run = dict(max_new_tokens=4, progress=False)
    top1, _ = generate_completions(
        model, word_tokenizer, PROMPTS, parse_method("sample:top_k=1"), seeds=seeds, **run
    )
    greedy, _ = generate_completions(model, word_tokenizer, PROMPTS, parse_method("greedy"), **run)
    assert [c.text for c in top1] == [c.text for c in greedy]
