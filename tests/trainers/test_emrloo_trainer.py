"""EMRLOOTrainer (EM-RL, paper 1, section 3.2) on a sharpened tiny Llama: the EM reward equals an
independent float64 computation from the sampling policy, comes from trl's own scoring forward, is
combined with user rewards by weight, gives trl's leave-one-out advantages, and training lowers the
entropy; plus the configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from trl import RLOOConfig

from em_hf.rewards import self_consistency_reward
from em_hf.trainers.emrloo_config import EMRLOOConfig
from em_hf.trainers.emrloo_trainer import EMRLOOTrainer
from tests.helpers import make_tiny_llama
from tests.trainers.emrloo_helpers import (
    generation_batch,
    load_tiny_llama,
    make_args,
    prompt_dataset,
    prompt_messages,
    save_tiny_llama,
)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def _python_rewards(model, out: dict, temperature: float, shift: int = 0) -> tuple[list[float], list[float]]:
    """r_tok and r_seq of each completion in ``out`` (trl's generate-and-score output) from a plain
    float64 forward of ``model`` and Python loops. ``shift`` moves the scored positions (a deliberate
    alignment error, to show the comparison can fail)."""
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model.double()(input_ids=ids, attention_mask=attention).logits
    model.float()
    p = out["prompt_ids"].size(1)
    r_tok, r_seq = [], []
    for i in range(ids.size(0)):
        tok = seq = 0.0
        for t in range(out["completion_ids"].size(1)):
            if not out["completion_mask"][i, t]:
                continue
            row = [z / temperature for z in logits[i, p - 1 + t + shift].tolist()]
            top = max(row)
            log_total = top + math.log(sum(math.exp(z - top) for z in row))
            tok -= -sum(math.exp(z - log_total) * (z - log_total) for z in row)
            seq += row[int(out["completion_ids"][i, t])] - log_total
        r_tok.append(tok)
        r_seq.append(seq)
    return r_tok, r_seq


def _count_scoring_forwards(model) -> list[int]:
    """Count forward calls through trl's fused LM head (scoring passes, not generation steps)."""
    calls = [0]
    forward = model.forward

    def counting_forward(*args, **kwargs):
        if kwargs.get("fused_lm_head"):
            calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counting_forward
    return calls


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_em_reward_is_the_sampling_policys_entropy_from_trls_own_forward(
    tiny_path, tmp_path, word_tokenizer, kind
):
    temperature = 0.7  # the policy is softmax(z / T): the reward must use the same T
    args = make_args(tmp_path, em_reward=kind, temperature=temperature, beta=0.001)
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(tiny_path),
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    policy_forwards = _count_scoring_forwards(trainer.model)
    out = trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    assert policy_forwards[0] == 1  # trl's own scoring forward of the policy, no second one
    got = list(trainer._logs["rewards"][f"em_{kind}"])
    assert len(got) == 8
    # completions of different lengths (EOS inside, right padding) make the mask matter
    lengths = out["completion_mask"].sum(1)
    assert lengths.min() < lengths.max() or lengths.max() < out["completion_ids"].size(1)
    r_tok, r_seq = _python_rewards(load_tiny_llama(tiny_path), out, temperature)
    expected = r_tok if kind == "token" else r_seq
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-4,
        atol=1e-4,
    )
    shifted_tok, shifted_seq = _python_rewards(load_tiny_llama(tiny_path), out, temperature, shift=-1)
    shifted = shifted_tok if kind == "token" else shifted_seq
    assert max(abs(a - b) for a, b in zip(shifted, expected, strict=True)) > 1e-2
    if kind == "sequence":  # r_seq is exactly trl's old_logps (same forward, same mask)
        torch.testing.assert_close(torch.tensor(got), out["old_logps"], rtol=1e-5, atol=1e-5)
    # the hook is disarmed and the scores released after the step
    assert trainer._em_scores is None and not trainer._em_armed


def test_rewards_combine_by_weight_and_give_leave_one_out_advantages(tiny_path, tmp_path, word_tokenizer):
    known = [1.0, 2.0, 3.0, 6.0, 0.0, -1.0, 4.0, 4.0]

    def known_reward(prompts, completions, **kwargs):
        return known[: len(completions)]

    args = make_args(tmp_path, em_reward="sequence", em_reward_weight=0.5, reward_weights=[2.0], beta=0.0)
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(tiny_path),
        reward_funcs=known_reward,
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    assert trainer.reward_weights.tolist() == [2.0, 0.5]
    assert trainer.reward_func_names == ["known_reward", "em_sequence"]
    assert args.reward_weights == [2.0]  # the user's config is left as given
    out = trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    r_seq = out["old_logps"].tolist()
    rewards = [2.0 * u + 0.5 * s for u, s in zip(known, r_seq, strict=True)]
    expected = []
    for g in range(2):
        group = rewards[4 * g : 4 * g + 4]
        expected += [r - (sum(group) - r) / 3 for r in group]  # A_i = r_i - mean of the other three
    torch.testing.assert_close(out["advantages"].double(), torch.tensor(expected, dtype=torch.float64))


def test_mask_truncated_completions_makes_them_unscorable_not_best(tiny_path, tmp_path, word_tokenizer):
    # trl zeroes the mask of truncated completions; an empty sum would be the best EM reward (0), so
    # the EM reward is None there (trl: unscorable, advantage 0, excluded from the baseline).
    args = make_args(tmp_path, em_reward="token", mask_truncated_completions=True, max_completion_length=3)
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(tiny_path),
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    out = trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    got = list(trainer._logs["rewards"]["em_token"])
    empty = out["completion_mask"].sum(1) == 0
    assert bool(empty.any())  # 3 tokens: some completions are truncated
    for reward, is_empty, advantage in zip(got, empty.tolist(), out["advantages"].tolist(), strict=True):
        assert math.isnan(reward) == is_empty
        if is_empty:
            assert advantage == 0.0
        else:
            assert reward < 0


def _sample_entropy(model, tokenizer, prompts, seed: int = 0) -> float:
    """Mean token entropy of sampled completions (T=1, 8 tokens, 4 per prompt), through EOS."""
    from em_hf.ops import token_entropy

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        gen = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=8,
            num_return_sequences=4,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=1,
            eos_token_id=1,
        )
    entropies = token_entropy(torch.stack(gen.logits, dim=1))
    new_tokens = gen.sequences[:, inputs["input_ids"].size(1) :]
    ended_before = torch.cumsum((new_tokens == 1).int(), dim=1) - (new_tokens == 1).int()
    mask = ended_before == 0  # through the first EOS
    return float((entropies * mask).sum() / mask.sum())


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_training_lowers_the_mean_entropy(tiny_path, tmp_path, word_tokenizer, kind):
    model = load_tiny_llama(tiny_path)
    prompts = prompt_messages(4)
    before = _sample_entropy(model, word_tokenizer, prompts)
    args = make_args(tmp_path, em_reward=kind, max_steps=3, learning_rate=1e-3)
    trainer = EMRLOOTrainer(
        model=model, args=args, train_dataset=prompt_dataset(4), processing_class=word_tokenizer
    )
    trainer.train()
    after = _sample_entropy(trainer.model.eval(), word_tokenizer, prompts)
    assert after < 0.8 * before, (before, after)
    logged = [
        h[f"rewards/em_{kind}/mean"] for h in trainer.state.log_history if f"rewards/em_{kind}/mean" in h
    ]
    assert len(logged) == 3 and all(math.isfinite(x) for x in logged)


def test_sc_rl_with_em_reward_none_is_plain_rloo(tiny_path, tmp_path, word_tokenizer):
    args = make_args(tmp_path, em_reward=None, beta=0.0)
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(tiny_path),
        reward_funcs=self_consistency_reward,
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    assert trainer.reward_func_names == ["self_consistency_reward"]
    policy_forwards = _count_scoring_forwards(trainer.model)
    trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    assert policy_forwards[0] == 1
    assert all(0.0 <= r <= 1.0 for r in trainer._logs["rewards"]["self_consistency_reward"])


def test_config_presets_and_errors(tmp_path):
    paper = EMRLOOConfig.paper(output_dir=str(tmp_path), em_reward="sequence", bf16=False)
    assert (paper.num_generations, paper.beta, paper.learning_rate) == (4, 0.001, 1e-6)
    assert paper.em_reward == "sequence"
    assert EMRLOOConfig.paper(output_dir=str(tmp_path), bf16=False, learning_rate=1e-5).learning_rate == 1e-5
    assert EMRLOOConfig(output_dir=str(tmp_path), bf16=False, em_reward="none").em_reward is None
    with pytest.raises(ValueError, match="`em_reward` must be one of"):
        EMRLOOConfig(output_dir=str(tmp_path), bf16=False, em_reward="trajectory")
    with pytest.raises(ValueError, match="`num_generations` must be >= 2"):
        EMRLOOConfig(output_dir=str(tmp_path), bf16=False, num_generations=1, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match="`em_reward_weight` must be a finite number"):
        EMRLOOConfig(output_dir=str(tmp_path), bf16=False, em_reward_weight=float("nan"))


def test_precision_follows_the_hardware_unless_set(tmp_path, monkeypatch):
    from em_hf.trainers import emrloo_config

    # No bf16 GPU here: trl's default (bf16=True) would stop the run; left unset, it is float32.
    expected = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert emrloo_config.bf16_available() is expected
    assert EMRLOOConfig.paper(output_dir=str(tmp_path)).bf16 is expected  # no error on this machine
    monkeypatch.setattr(emrloo_config, "bf16_available", lambda: False)
    assert EMRLOOConfig.paper(output_dir=str(tmp_path)).bf16 is False
    assert EMRLOOConfig.paper(output_dir=str(tmp_path), bf16=False).bf16 is False
    # Where bf16 is available it is chosen; a value set by the user is never replaced.
    monkeypatch.setattr(emrloo_config, "bf16_available", lambda: True)
    if expected:
        assert EMRLOOConfig.paper(output_dir=str(tmp_path)).bf16 is True
    else:
        with pytest.raises(ValueError, match="bf16"):  # chosen, and this machine has no bf16 GPU
            EMRLOOConfig.paper(output_dir=str(tmp_path))
    assert EMRLOOConfig.paper(output_dir=str(tmp_path), bf16=False).bf16 is False


def test_saved_model_reloads_with_a_left_padding_tokenizer(tiny_path, tmp_path, word_tokenizer):
    from transformers import AutoTokenizer

    word_tokenizer.padding_side = "right"  # what a user's own tokenizer may have
    word_tokenizer.init_kwargs.pop("padding_side", None)
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(tiny_path),
        args=make_args(tmp_path),
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert (reloaded.padding_side, reloaded.pad_token) == ("left", word_tokenizer.pad_token)


def test_trainer_errors(tiny_path, tmp_path, word_tokenizer):
    model = load_tiny_llama(tiny_path)
    dataset = prompt_dataset(2)
    with pytest.raises(TypeError, match=r"must be an em_hf\.EMRLOOConfig"):
        EMRLOOTrainer(
            model=model, args=RLOOConfig(output_dir=str(tmp_path), bf16=False), train_dataset=dataset
        )
    with pytest.raises(ValueError, match="No reward"):
        EMRLOOTrainer(
            model=model,
            args=make_args(tmp_path, em_reward=None),
            train_dataset=dataset,
            processing_class=word_tokenizer,
        )
    with pytest.raises(ValueError, match="one weight per function in `reward_funcs`"):
        EMRLOOTrainer(
            model=model,
            reward_funcs=self_consistency_reward,
            args=make_args(tmp_path, reward_weights=[1.0, 1.0]),
            train_dataset=dataset,
            processing_class=word_tokenizer,
        )
    with pytest.raises(ValueError, match="save_pretrained"):
        EMRLOOTrainer(
            model=make_tiny_llama(),
            args=make_args(tmp_path),
            train_dataset=dataset,
            processing_class=word_tokenizer,
        )
    args = make_args(tmp_path)
    args.em_reward = "tokens"  # set after validation
    with pytest.raises(ValueError, match=r"`args\.em_reward` must be one of"):
        EMRLOOTrainer(model=model, args=args, train_dataset=dataset, processing_class=word_tokenizer)
