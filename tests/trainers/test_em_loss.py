"""The EM-FT / one-shot EM loss of EntropyMinTrainer on a batch built by hand in trl's layout, against an
independent computation: every row run ALONE and unpadded through the model, float64 entropies at the
positions that predict the completion tokens (SPEC.md, method 1 "position alignment").

The tiny Llama's LM head is sharpened x40 (tests/helpers.py), so its entropies differ strongly between
positions and a loss off by one position, or one that counts padding or tokens after the EOS, gives a
different number (each test checks that this is so for its batch)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import em_hf.trainers.em_loss as em_loss
from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from em_hf.trainers.em_loss import entropy_min_loss, fused_head_unsupported_reason
from tests.helpers import WORD_EOS_ID, make_tiny_llama, make_word_tokenizer

EOS = WORD_EOS_ID  # also the tokenizer's pad token
PAD = WORD_EOS_ID
# Prompts of uneven lengths (left-padded in the batch) and completions through their first EOS: row 0 stops
# early, row 1 stops later, row 2 was truncated at the completion width (no EOS).
PROMPTS = [[5, 17, 33], [7, 9, 11, 13, 21], [40, 41]]
COMPLETIONS = [[50, 51, EOS], [60, 61, 62, 63, EOS], [70, 71, 72, 73, 74, 75]]
# What follows the first EOS in the batch (masked out): padding in row 0, a stray generated token in row 1.
AFTER_EOS = [[PAD, PAD, PAD], [99], []]
WIDTH = 6  # completion width


def hand_built_batch(
    prompt_pad: int = PAD, after_eos: list[list[int]] | None = None
) -> dict[str, torch.Tensor]:
    """trl's layout: prompts left-padded with ``prompt_pad``, completions right-padded, mask 0 after EOS."""
    after_eos = AFTER_EOS if after_eos is None else after_eos
    width = max(len(p) for p in PROMPTS)
    prompt_ids = torch.tensor([[prompt_pad] * (width - len(p)) + p for p in PROMPTS])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    rows = [c + tail for c, tail in zip(COMPLETIONS, after_eos, strict=True)]
    assert all(len(row) == WIDTH for row in rows)
    completion_ids = torch.tensor(rows)
    completion_mask = torch.tensor([[1] * len(c) + [0] * (WIDTH - len(c)) for c in COMPLETIONS])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }


def make_trainer(tmp_path, model: nn.Module, peft_config=None, **config) -> EntropyMinTrainer:
    args = EntropyMinConfig(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_completion_length=WIDTH,
        **config,
    )
    return EntropyMinTrainer(
        model=model,
        args=args,
        train_dataset=["Compute 1 + 2"],
        processing_class=make_word_tokenizer(),
        peft_config=peft_config,
    )


def row_terms(
    model: nn.Module, temperature: float, dtype=torch.float64, shift: int = 0
) -> list[torch.Tensor]:
    """Per row, run alone on its unpadded prompt + completion: the entropies H(softmax(z / T)) at indices
    len(prompt) - 1 ... len(prompt) + n - 2 (the distributions of the n completion tokens). ``shift`` moves
    the window (to show that a misaligned loss would be detected)."""
    terms = []
    for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].to(dtype)
        start = len(prompt) - 1 + shift
        logp = torch.log_softmax(logits[start : start + len(completion)] / temperature, dim=-1)
        terms.append(-(logp.exp() * logp).sum(dim=-1))
    return terms


def row_logps(model: nn.Module, temperature: float, dtype=torch.float64) -> list[torch.Tensor]:
    """Per row, log softmax(z / T)[y] of each completion token y (row run alone, unpadded)."""
    out = []
    for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].to(dtype)
        start = len(prompt) - 1
        logp = torch.log_softmax(logits[start : start + len(completion)] / temperature, dim=-1)
        out.append(logp.gather(-1, torch.tensor(completion)[:, None])[:, 0])
    return out


def reduce(terms: list[torch.Tensor], normalization: str) -> torch.Tensor:
    if normalization == "token_mean":
        return torch.cat(terms).sum() / sum(len(t) for t in terms)
    return sum(t.sum() for t in terms) / len(terms)  # sequence_sum: (1/B) sum_b sum_t


def use_logits_path(monkeypatch, trainer: EntropyMinTrainer) -> None:
    """Force the path that takes the model's logits (no fused LM-head entropy)."""
    monkeypatch.setattr(trainer, "_head_for", lambda model: None)


def count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


# ---------------------------------------------------------------------------------------- entropy loss
@pytest.mark.parametrize("path", ["fused", "logits"])
@pytest.mark.parametrize("entropy_temperature", [1.0, 0.5])
@pytest.mark.parametrize("normalization", ["token_mean", "sequence_sum"])
def test_loss_on_hand_built_batch_equals_rows_computed_alone(
    tmp_path, monkeypatch, path, entropy_temperature, normalization
):
    model = make_tiny_llama()
    trainer = make_trainer(
        tmp_path, model, entropy_temperature=entropy_temperature, loss_normalization=normalization
    )
    fused_calls = count_calls(monkeypatch, em_loss, "linear_entropy_loss")
    logits_calls = count_calls(monkeypatch, em_loss, "token_entropy")
    if path == "logits":
        use_logits_path(monkeypatch, trainer)
    else:
        assert trainer._head_for(model) is model.lm_head

    with torch.no_grad():
        loss = trainer.compute_loss(model, hand_built_batch())
        expected = reduce(row_terms(model, entropy_temperature), normalization)
        shifted = reduce(row_terms(model, entropy_temperature, shift=1), normalization)

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert (fused_calls, logits_calls) == (([1], []) if path == "fused" else ([], [1]))
    # The batch can tell a right alignment from a wrong one.
    assert abs(shifted - expected) > 0.05
    # The logged mean entropy is the mean over the 14 completion tokens, whatever the normalization.
    logged = trainer._metrics["eval"]["entropy"]
    torch.testing.assert_close(
        torch.tensor(logged[-1]).double(),
        reduce(row_terms(model, entropy_temperature), "token_mean").detach(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_fused_path_never_projects_completion_positions_through_the_head(tmp_path):
    """On the fused path the LM head is fed zero positions: the [B, C, V] logits never exist."""
    model = make_tiny_llama()
    trainer = make_trainer(tmp_path, model, lm_head_chunk_size=4)  # 14 tokens: 4 chunks
    shapes = []
    handle = model.lm_head.register_forward_hook(
        lambda module, args, output: shapes.append(tuple(output.shape))
    )
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, hand_built_batch())
    finally:
        handle.remove()
    assert shapes and all(shape[-2] == 0 for shape in shapes)
    torch.testing.assert_close(
        loss.double(), reduce(row_terms(model, 1.0), "token_mean"), rtol=1e-5, atol=1e-5
    )


class _SubclassedHead(nn.Linear):
    """Same output as the plain head, but not a plain nn.Linear: the trainer must take the logits path."""


def test_model_with_a_non_linear_head_takes_the_logits_path(tmp_path, monkeypatch):
    model = make_tiny_llama()
    head = _SubclassedHead(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    assert fused_head_unsupported_reason(model) is not None
    trainer = make_trainer(tmp_path, model, entropy_temperature=0.5, loss_normalization="sequence_sum")
    assert trainer._head_for(model) is None
    fused_calls = count_calls(monkeypatch, em_loss, "linear_entropy_loss")
    with torch.no_grad():
        loss = trainer.compute_loss(model, hand_built_batch())
    assert fused_calls == []
    torch.testing.assert_close(
        loss.double(), reduce(row_terms(model, 0.5), "sequence_sum"), rtol=1e-5, atol=1e-5
    )


def test_fused_head_unsupported_reason():
    model = make_tiny_llama()
    assert fused_head_unsupported_reason(model) is None
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in fused_head_unsupported_reason(model)
    model = make_tiny_llama()
    model.config.logit_scale = 0.5
    assert "logit_scale" in fused_head_unsupported_reason(model)


# ------------------------------------------------------------------------------------------- gradients
GRAD_PARAMS = [
    "lm_head.weight",
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
]


def grads_of(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = dict(model.named_parameters())
    return {name: params[name].grad.clone() for name in GRAD_PARAMS}


def assert_grads_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name in GRAD_PARAMS:
        scale = expected[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("path", ["fused", "logits"])
def test_gradients_equal_those_of_the_rows_computed_alone(tmp_path, monkeypatch, path):
    model = make_tiny_llama()
    trainer = make_trainer(tmp_path, model, entropy_temperature=0.5, loss_normalization="sequence_sum")
    if path == "logits":
        use_logits_path(monkeypatch, trainer)
    got = grads_of(model, trainer.compute_loss(model, hand_built_batch()))
    expected = grads_of(model, reduce(row_terms(model, 0.5, dtype=torch.float32), "sequence_sum"))
    assert_grads_close(got, expected)


@pytest.mark.parametrize("path", ["fused", "logits"])
def test_padding_and_tokens_after_eos_change_neither_loss_nor_gradients(tmp_path, monkeypatch, path):
    model = make_tiny_llama()
    trainer = make_trainer(tmp_path, model)
    if path == "logits":
        use_logits_path(monkeypatch, trainer)
    loss = trainer.compute_loss(model, hand_built_batch())
    grads = grads_of(model, loss)
    # Other prompt padding ids (97) and other (masked) tokens after the EOS (98, 96, 95).
    changed = hand_built_batch(prompt_pad=97, after_eos=[[98, 96, 95], [95], []])
    assert not torch.equal(changed["prompt_ids"], hand_built_batch()["prompt_ids"])
    assert not torch.equal(changed["completion_ids"], hand_built_batch()["completion_ids"])
    changed_loss = trainer.compute_loss(model, changed)
    changed_grads = grads_of(model, changed_loss)
    torch.testing.assert_close(changed_loss, loss)
    for name in GRAD_PARAMS:
        torch.testing.assert_close(changed_grads[name], grads[name], msg=name)
    # Ids that only sit at masked positions get no embedding gradient at all; neither does the last token
    # of the truncated row (75): the distribution at its position predicts nothing that is counted.
    embedding_grad = changed_grads["model.embed_tokens.weight"]
    for token in (97, 98, 96, 95, 75):
        assert torch.count_nonzero(embedding_grad[token]) == 0, token
    # ... while the first completion token of that row (70) and the last prompt token (41) do.
    for token in (70, 41):
        assert torch.count_nonzero(embedding_grad[token]) > 0, token


# ----------------------------------------------------------------------------------- KL to a reference
@pytest.mark.parametrize("path", ["fused", "logits"])
def test_kl_is_zero_and_loss_is_pure_entropy_while_the_policy_equals_the_reference(
    tmp_path, monkeypatch, path
):
    model = make_tiny_llama()
    trainer = make_trainer(tmp_path, model, beta=0.5, temperature=0.7, entropy_temperature=0.5)
    assert trainer.ref_model is not None and trainer.ref_model is not model
    if path == "logits":
        use_logits_path(monkeypatch, trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(model, hand_built_batch())
    torch.testing.assert_close(
        loss.double(), reduce(row_terms(model, 0.5), "token_mean"), rtol=1e-5, atol=1e-5
    )
    assert abs(trainer._metrics["eval"]["kl"][-1]) < 1e-6


@pytest.mark.parametrize("path", ["fused", "logits"])
@pytest.mark.parametrize(
    ("temperature", "entropy_temperature", "normalization"),
    [(1.0, 1.0, "token_mean"), (0.7, 0.5, "sequence_sum")],
)
def test_kl_term_equals_independent_k3_against_a_frozen_copy(
    tmp_path, monkeypatch, path, temperature, entropy_temperature, normalization
):
    beta = 0.3
    model = make_tiny_llama()
    reference = copy.deepcopy(model)
    trainer = make_trainer(
        tmp_path,
        model,
        beta=beta,
        temperature=temperature,
        entropy_temperature=entropy_temperature,
        loss_normalization=normalization,
    )
    if path == "logits":
        use_logits_path(monkeypatch, trainer)
    torch.manual_seed(1)
    with torch.no_grad():  # the policy moves away from the reference the trainer copied
        for param in model.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))

    loss = trainer.compute_loss(model, hand_built_batch())
    got_grads = grads_of(model, loss)

    def independent(dtype):
        entropies = row_terms(model, entropy_temperature, dtype=dtype)
        with torch.no_grad():
            ref_logps = row_logps(reference, temperature, dtype=dtype)
        logps = row_logps(model, temperature, dtype=dtype)
        kls = [torch.exp(r - lp) - (r - lp) - 1 for r, lp in zip(ref_logps, logps, strict=True)]
        terms = [h + beta * kl for h, kl in zip(entropies, kls, strict=True)]
        return reduce(terms, normalization), torch.cat(kls).mean()

    with torch.no_grad():
        expected, expected_kl = independent(torch.float64)
    assert expected_kl > 1e-2  # the perturbation is visible in the KL
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(trainer._metrics["eval"]["kl"][-1]).double(), expected_kl, rtol=1e-4, atol=1e-6
    )
    assert_grads_close(got_grads, grads_of(model, independent(torch.float32)[0]))


def test_with_lora_the_reference_is_the_model_with_adapters_disabled(tmp_path):
    from peft import LoraConfig

    beta, temperature = 0.3, 0.7
    base = make_tiny_llama()
    reference = copy.deepcopy(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = make_trainer(tmp_path, base, peft_config=lora, beta=beta, temperature=temperature)
    policy = trainer.model.eval()
    assert trainer.ref_model is None  # no copy: the base weights are the reference
    with torch.no_grad():
        loss_at_init = trainer.compute_loss(policy, hand_built_batch())
    assert abs(trainer._metrics["eval"]["kl"][-1]) < 1e-6  # LoRA starts as the identity
    torch.testing.assert_close(
        loss_at_init.double(), reduce(row_terms(reference, 1.0), "token_mean"), rtol=1e-5, atol=1e-5
    )

    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn_like(param))
        loss = trainer.compute_loss(policy, hand_built_batch())
        ref_logps = row_logps(reference, temperature)
        logps = row_logps(policy, temperature)
        kls = [torch.exp(r - lp) - (r - lp) - 1 for r, lp in zip(ref_logps, logps, strict=True)]
        terms = [h + beta * kl for h, kl in zip(row_terms(policy, 1.0), kls, strict=True)]
        expected = reduce(terms, "token_mean")
    assert torch.cat(kls).mean() > 1e-3
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_missing_reference_log_probs_with_beta_raise():
    states = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="ref_logps"):
        entropy_min_loss(
            states,
            torch.tensor([[1, 2]]),
            torch.tensor([[1, 1]]),
            head=None,
            entropy_temperature=1.0,
            beta=0.1,
        )
