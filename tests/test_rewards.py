"""em_hf.rewards: the EM-RL rewards against plain-Python float64 sums, and the SC-RL reward on known
answers (paper 1, sections 3.2 and 3.3)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from em_hf.ops import token_entropy
from em_hf.rewards import self_consistency_reward, sequence_logprob_reward, token_entropy_reward
from em_hf.utils.answers import extract_answer
from tests.helpers import make_tiny_llama

EOS = 2


def _python_entropy(logits_row: list[float]) -> float:
    """H of softmax(z) in plain float64 Python."""
    top = max(logits_row)
    exps = [math.exp(z - top) for z in logits_row]
    total = sum(exps)
    return -sum((e / total) * math.log(e / total) for e in exps if e > 0)


def _fixed_completions():
    """A sharpened tiny model, one prompt and three completions of different lengths: one stops at an
    EOS in the middle (tokens after it are garbage), one is right-padded, one runs to the end."""
    model = make_tiny_llama(vocab_size=97, hidden_size=32, eos_token_id=EOS, pad_token_id=0)
    prompt = [5, 17, 33]
    completions = [
        [40, 41, EOS, 77, 78, 79],  # EOS at index 2: tokens 77.. must not count
        [50, 51, 52, EOS, 0, 0],  # right padding after EOS
        [60, 61, 62, 63, 64, 65],  # truncated (no EOS)
    ]
    lengths = [3, 4, 6]  # through the first EOS
    input_ids = torch.tensor([prompt + c for c in completions])
    with torch.no_grad():
        logits = model(input_ids).logits.double()
    return prompt, completions, lengths, logits


def test_token_entropy_reward_equals_python_sum_over_completion_tokens():
    prompt, completions, lengths, logits = _fixed_completions()
    p, c = len(prompt), len(completions[0])
    # logits at index i predict token i + 1: completion token t is predicted at index p - 1 + t
    entropies = token_entropy(logits[:, p - 1 : p - 1 + c].float())
    mask = torch.tensor([[1 if t < n else 0 for t in range(c)] for n in lengths])
    got = token_entropy_reward(entropies, mask)
    expected = [
        -sum(_python_entropy(logits[i, p - 1 + t].tolist()) for t in range(n)) for i, n in enumerate(lengths)
    ]
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    # the entropies differ strongly between positions (sharpened model), so a mask shifted by one
    # token or a sum over everything would give other numbers
    shifted = torch.roll(mask, shifts=1, dims=1)
    assert (token_entropy_reward(entropies, shifted).double() - got.double()).abs().max() > 1e-2
    assert (-entropies.sum(-1).double() - got.double()).abs().max() > 1e-2


def test_sequence_logprob_reward_equals_log_probability_of_the_completion():
    prompt, completions, lengths, logits = _fixed_completions()
    p, c = len(prompt), len(completions[0])
    logps_all = torch.log_softmax(logits[:, p - 1 : p - 1 + c], dim=-1)
    logps = logps_all.gather(-1, torch.tensor(completions).unsqueeze(-1)).squeeze(-1)
    mask = torch.tensor([[t < n for t in range(c)] for n in lengths])
    got = sequence_logprob_reward(logps, mask)
    assert got.dtype == torch.float64  # float64 in, float64 out
    expected = []
    for i, n in enumerate(lengths):
        total = 0.0
        for t in range(n):
            row = logits[i, p - 1 + t].tolist()
            top = max(row)
            total += row[completions[i][t]] - top - math.log(sum(math.exp(z - top) for z in row))
        expected.append(total)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert (sequence_logprob_reward(logps, torch.roll(mask, 1, dims=1)) - got).abs().max() > 1e-2


def test_rewards_ignore_nan_at_padding_and_give_zero_for_empty_rows():
    values = torch.tensor([[-0.5, -1.0, float("nan")], [float("inf"), 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(sequence_logprob_reward(values, mask), torch.tensor([-1.5, 0.0]))
    torch.testing.assert_close(token_entropy_reward(values.abs(), mask), torch.tensor([-1.5, -0.0]))


@pytest.mark.parametrize(
    ("values", "mask", "error", "match"),
    [
        ([[1.0, 2.0]], torch.ones(1, 2), TypeError, "`entropies` must be a torch.Tensor"),
        (torch.ones(2), torch.ones(2), ValueError, r"shape \[N, T\]"),
        (torch.ones(2, 3), torch.ones(2, 2), ValueError, "`mask` must have the shape"),
        (torch.ones(2, 3), torch.full((2, 3), 2), ValueError, "only 0 and 1"),
        (torch.tensor([[1.0, float("nan")]]), torch.ones(1, 2), ValueError, "NaN or inf"),
        (torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), TypeError, "floating-point"),
    ],
)
def test_reward_input_errors(values, mask, error, match):
    with pytest.raises(error, match=match):
        token_entropy_reward(values, mask)
    with pytest.raises(error, match=match.replace("entropies", "logps")):
        sequence_logprob_reward(values, mask)


def test_self_consistency_reward_on_known_answers():
    prompts = ["Compute 2 + 3."] * 4 + ["Compute 1 + 1."] * 4
    completions = [
        "The answer is 5.",
        "\\boxed{5}",
        "It is 7",
        "I do not know",  # no extractable answer: 0, and no vote for anyone
        "2",
        "2.0",  # normalized to "2"
        "1,000",
        "two",
    ]
    got = self_consistency_reward(prompts, completions)
    assert got == [2 / 4, 2 / 4, 1 / 4, 0.0, 2 / 4, 2 / 4, 1 / 4, 0.0]


def test_self_consistency_reward_with_chat_messages_and_explicit_groups():
    # trl's conversational format: prompts are message lists, completions one assistant message
    p1 = [{"role": "user", "content": "Compute 4 + 4."}]
    p2 = [{"role": "user", "content": "Compute 3 + 3."}]
    prompts = [p1, p1, p1, p2, p2, p2]
    answers = ["8", "8", "8", "6", "5", "x"]
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    assert self_consistency_reward(prompts, completions) == [1.0, 1.0, 1.0, 1 / 3, 1 / 3, 0.0]
    # the same prompt drawn twice in a row: consecutive runs merge, num_generations splits them
    prompts = [p1] * 4
    completions = [[{"role": "assistant", "content": a}] for a in ["8", "8", "9", "8"]]
    assert self_consistency_reward(prompts, completions) == [3 / 4, 3 / 4, 1 / 4, 3 / 4]
    by_two = functools.partial(self_consistency_reward, num_generations=2)
    assert by_two(prompts, completions) == [1.0, 1.0, 1 / 2, 1 / 2]


def test_self_consistency_reward_errors():
    with pytest.raises(ValueError, match="same length"):
        self_consistency_reward(["a", "a"], ["1"])
    with pytest.raises(ValueError, match="groups of `num_generations`=4"):
        self_consistency_reward(["a"] * 6, ["1"] * 6, num_generations=4)
    with pytest.raises(ValueError, match="prompts differ"):
        self_consistency_reward(["a", "b"], ["1", "1"], num_generations=2)
    with pytest.raises(ValueError, match="`num_generations` must be"):
        self_consistency_reward(["a"], ["1"], num_generations=0)
    with pytest.raises(TypeError, match="`completions` must hold"):
        self_consistency_reward(["a"], [3])


@pytest.mark.parametrize("trainer_name", ["RLOOTrainer", "GRPOTrainer"])
def test_self_consistency_reward_as_a_trl_reward_function(tmp_path, word_tokenizer, trainer_name):
    """trl's own trainers call it with their prompt/completion formats and group layout; the rewards
    they record equal a vote recomputed here over blocks of num_generations."""
    import trl

    from tests.trainers.emrloo_helpers import FAST_ARGS, generation_batch, prompt_dataset, prompt_messages

    calls = []

    def sc(prompts, completions, **kwargs):
        rewards = self_consistency_reward(prompts, completions, **kwargs)
        calls.append((prompts, completions, rewards))
        return rewards

    config_cls = getattr(trl, trainer_name.replace("Trainer", "Config"))
    fast = {k: v for k, v in FAST_ARGS.items() if k != "beta"}
    args = config_cls(output_dir=str(tmp_path), beta=0.0, **fast)
    trainer = getattr(trl, trainer_name)(
        model=make_tiny_llama(),
        reward_funcs=sc,
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))
    ((prompts, completions, rewards),) = calls
    assert isinstance(prompts[0], list) and completions[0][0]["role"] == "assistant"  # conversational
    expected = []
    for g in range(2):
        answers = [extract_answer(c[0]["content"]) for c in completions[4 * g : 4 * g + 4]]
        expected += [0.0 if a is None else sum(b == a for b in answers) / 4 for a in answers]
    assert rewards == expected
    assert len(set(rewards)) > 1  # the completions disagree, so the vote is not trivial
