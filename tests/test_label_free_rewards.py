"""The label-free rewards beyond EM-RL (INTUITOR's self-certainty, RENT's mean entropy, EMPO's
semantic entropy): each against an independent computation on hand-built batches, as trl reward
functions in 2-step runs of trl's RLOOTrainer and GRPOTrainer, and inside EMRLOOTrainer (from its
own scoring pass, no extra forward)."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf import EMRLOOTrainer
from em_hf.rewards import (
    TokenStatisticsReward,
    cluster_entropy,
    mean_entropy_reward,
    self_certainty_reward,
    semantic_clusters,
    semantic_entropy_reward,
    token_entropy_reward,
)
from tests.helpers import make_tiny_llama
from tests.trainers.emrloo_helpers import (
    FAST_ARGS,
    generation_batch,
    load_tiny_llama,
    make_args,
    prompt_dataset,
    prompt_messages,
    save_tiny_llama,
)


def test_self_certainty_reward_is_the_mean_over_completion_tokens():
    values = torch.tensor([[0.2, 1.4, 3.0, float("nan")], [2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    expected = [(0.2 + 1.4 + 3.0) / 3, 2.0, 0.0]
    torch.testing.assert_close(self_certainty_reward(values, mask), torch.tensor(expected))


def test_mean_entropy_reward_is_minus_the_mean_and_penalizes_missing_answers():
    entropies = torch.tensor([[1.0, 2.0, 9.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    rewards = mean_entropy_reward(entropies, mask)
    torch.testing.assert_close(rewards, torch.tensor([-1.5, -0.5, -1.0]))
    penalized = mean_entropy_reward(entropies, mask, torch.tensor([True, False, True]), format_penalty=0.25)
    torch.testing.assert_close(penalized, torch.tensor([-1.5, -0.75, -1.0]))
    # EM-RL-token's sum prefers the short, less certain completion 2; RENT's mean prefers 1
    summed = token_entropy_reward(entropies, mask)
    assert summed[2] > summed[1] and rewards[2] < rewards[1]
    with pytest.raises(ValueError, match=r"`has_answer` must be a bool tensor of shape \(3,\)"):
        mean_entropy_reward(entropies, mask, format_penalty=0.25)
    with pytest.raises(ValueError, match=r"`format_penalty` must be a finite number in \[0.0, inf\]"):
        mean_entropy_reward(entropies, mask, format_penalty=-1.0)


def test_semantic_clusters_group_equivalent_answers():
    assert semantic_clusters(["1/2", "0.5", r"\frac{1}{2}", "2", None, "2.0"]) == [0, 0, 0, 1, None, 1]
    assert semantic_clusters([r"x^2 - 1", r"(x-1)(x+1)", "x"]) == [0, 0, 1]
    assert cluster_entropy([0, 0, 0, 0]) == 0.0
    assert cluster_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    assert cluster_entropy([0, 0, None, None]) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    )


def test_semantic_entropy_reward_is_the_cluster_share_of_each_group():
    prompts = ["p1"] * 4 + ["p2"] * 4
    completions = [r"\boxed{\frac{1}{2}}", "so 0.5", r"\boxed{1/2}", "3"]
    completions += [r"\boxed{7}", "no answer here", r"\boxed{7.0}", r"\boxed{8}"]
    rewards = semantic_entropy_reward(prompts, completions, num_generations=4)
    assert rewards == [0.75, 0.75, 0.75, 0.25, 0.5, 0.0, 0.5, 0.25]


def reference_statistics(model, tokenizer, prompt: str, completion: list[int], temperature: float):
    """Per-token (H, KL(U || p), log p[y]) of one completion by a forward of the unpadded sequence
    and float64 log-softmax."""
    ids = tokenizer(prompt)["input_ids"] + completion
    logits = model(input_ids=torch.tensor([ids])).logits[0].double() / temperature
    rows = logits[len(ids) - len(completion) - 1 : len(ids) - 1]
    log_p = torch.log_softmax(rows, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    certainty = -log_p.mean(-1) - math.log(rows.shape[-1])
    return entropy, certainty, log_p[torch.arange(len(completion)), completion]


@pytest.mark.parametrize("name", ["self_certainty", "mean_entropy", "token_entropy", "sequence_logprob"])
def test_token_statistics_reward_matches_an_independent_forward(word_tokenizer, name):
    model = make_tiny_llama()
    prompts = ["Compute 1 + 2 =", "Compute 3 + 4 ="]
    completion_ids = [[5, 6, 7], [8]]
    reward = TokenStatisticsReward(name, model, word_tokenizer, temperature=0.7)
    got = reward(prompts, ["x", "y"], completion_ids=completion_ids)
    expected = []
    for prompt, completion in zip(prompts, completion_ids, strict=True):
        entropy, certainty, logp = reference_statistics(model, word_tokenizer, prompt, completion, 0.7)
        expected.append(
            {
                "self_certainty": certainty.mean(),
                "mean_entropy": -entropy.mean(),
                "token_entropy": -entropy.sum(),
                "sequence_logprob": logp.sum(),
            }[name].item()
        )
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert reward.__name__ == name


@pytest.mark.parametrize("trainer_name", ["RLOOTrainer", "GRPOTrainer"])
@pytest.mark.parametrize("name", ["self_certainty", "mean_entropy", "semantic_entropy"])
def test_two_steps_of_trl_trainers_with_each_reward(tmp_path, word_tokenizer, trainer_name, name):
    import trl

    model = make_tiny_llama()
    if name == "semantic_entropy":
        reward = semantic_entropy_reward
    else:
        reward = TokenStatisticsReward(name, model, word_tokenizer, temperature=1.0)
    config_cls = getattr(trl, trainer_name.replace("Trainer", "Config"))
    fast = {k: v for k, v in FAST_ARGS.items() if k not in ("beta", "max_steps")}
    args = config_cls(output_dir=str(tmp_path), beta=0.0, max_steps=2, **fast)
    trainer = getattr(trl, trainer_name)(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=prompt_dataset(4),
        processing_class=word_tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    key = f"rewards/{reward.__name__}/mean"  # trl logs a reward function under its __name__
    logged = [entry[key] for entry in trainer.state.log_history if key in entry]
    assert len(logged) == 2 and all(math.isfinite(v) for v in logged)


def test_emrloo_label_free_rewards_come_from_its_scoring_pass(tmp_path, word_tokenizer):
    """Each named reward is a trl reward function of its own, logged separately; the per-token ones
    equal an independent forward of the same model, and no forward is added."""
    path = save_tiny_llama(tmp_path / "model")
    weights = {"self_certainty": 1.0, "token_entropy": 0.5, "mean_entropy": 0.25, "semantic_entropy": 0.1}
    args = make_args(tmp_path, em_reward=None, label_free_rewards=weights, beta=0.0, max_steps=2)
    model = load_tiny_llama(path)
    trainer = EMRLOOTrainer(
        model=model, args=args, train_dataset=prompt_dataset(4), processing_class=word_tokenizer
    )
    assert [f.__name__ for f in trainer.reward_funcs] == list(weights)
    assert trainer.reward_weights.tolist() == pytest.approx(list(weights.values()))

    seen = {}
    original = trainer._label_free_rewards

    def spy(name, prompts, completions, completion_ids):
        seen[name] = (prompts, completion_ids, original(name, prompts, completions, completion_ids))
        return seen[name][2]

    trainer._label_free_rewards = spy
    forwards = []
    handle = model.model.register_forward_hook(lambda *_: forwards.append(1))
    trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    handle.remove()
    # one backbone forward to generate each token is transformers' generate; the scoring is one more
    # per batch: compare with the same step without label-free rewards
    with_rewards = len(forwards)
    plain = EMRLOOTrainer(
        model=model,
        args=make_args(tmp_path, em_reward="token", beta=0.0),
        train_dataset=prompt_dataset(4),
        processing_class=word_tokenizer,
    )
    forwards.clear()
    handle = model.model.register_forward_hook(lambda *_: forwards.append(1))
    plain._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    handle.remove()
    assert with_rewards == len(forwards)

    prompts, completion_ids, certainty = seen["self_certainty"]
    _, _, mean_entropy = seen["mean_entropy"]
    for i, ids in enumerate(completion_ids):
        text = word_tokenizer.apply_chat_template(prompts[i], tokenize=False, add_generation_prompt=True)
        entropy, kl, _ = reference_statistics(model, word_tokenizer, text, list(ids), args.temperature)
        assert certainty[i] == pytest.approx(kl.mean().item(), rel=1e-4, abs=1e-5)
        assert mean_entropy[i] == pytest.approx(-entropy.mean().item(), rel=1e-4, abs=1e-5)

    trainer._label_free_rewards = original
    trainer.train()
    last = trainer.state.log_history[-2]
    for name in weights:
        assert math.isfinite(last[f"rewards/{name}/mean"])
    assert "semantic_entropy/cluster_entropy" in last


def test_label_free_rewards_config_errors(tmp_path):
    with pytest.raises(ValueError, match="`label_free_rewards key` must be 'self_certainty'"):
        make_args(tmp_path, label_free_rewards={"confidence": 1.0})
    with pytest.raises(ValueError, match=r"label_free_rewards\['self_certainty'\]"):
        make_args(tmp_path, label_free_rewards={"self_certainty": math.nan})
    with pytest.raises(ValueError, match="non-empty dict"):
        make_args(tmp_path, label_free_rewards={})


def test_self_certainty_refuses_a_model_with_scaled_logits(tmp_path, word_tokenizer):
    """The self-certainty goes through the LM head weight and bias only; a soft-capped model's
    logits differ from that, so it is refused with the alternatives."""
    model = make_tiny_llama()
    model.config.final_logit_softcapping = 30.0
    args = make_args(tmp_path, em_reward=None, label_free_rewards={"self_certainty": 1.0}, beta=0.0)
    with pytest.raises(ValueError, match=r"`final_logit_softcapping`=30\.0.*'mean_entropy'"):
        EMRLOOTrainer(
            model=model, args=args, train_dataset=prompt_dataset(4), processing_class=word_tokenizer
        )
