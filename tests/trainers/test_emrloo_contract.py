"""Contract with trl: what EMRLOOTrainer's hook relies on in RLOOTrainer's private methods (see the
module docstring of em_hf/trainers/emrloo_trainer.py). Every failure names the supported trl range,
so a trl upgrade that changes the hooked code fails here, loudly, before it miscomputes a reward."""

from __future__ import annotations

import configparser
import inspect
import re
from pathlib import Path

import pytest
import torch
import trl
from trl import RLOOTrainer

from em_hf.trainers.emrloo_trainer import SUPPORTED_TRL, EMRLOOTrainer, check_trl_version
from tests.trainers.emrloo_helpers import (
    generation_batch,
    load_tiny_llama,
    make_args,
    prompt_dataset,
    prompt_messages,
    save_tiny_llama,
)

REPO = Path(__file__).resolve().parents[2]


def _require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(
            f"trl {trl.__version__} breaks EMRLOOTrainer's hook: {what}. The hook was written for "
            f"trl{SUPPORTED_TRL}; adapt em_hf/trainers/emrloo_trainer.py before widening SUPPORTED_TRL "
            "and setup.cfg.",
            pytrace=False,
        )


def test_installed_trl_is_supported_and_setup_cfg_pins_the_same_range():
    check_trl_version()  # raises with the range in the message
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirements = [r.strip() for r in config["options"]["install_requires"].splitlines()]
    trl_lines = [r for r in requirements if re.match(r"trl\b", r)]
    assert trl_lines == [f"trl{SUPPORTED_TRL}"], (trl_lines, SUPPORTED_TRL)


@pytest.mark.parametrize("version", ["1.15.2", "1.17.0", "2.0.0"])
def test_unsupported_trl_versions_fail_with_the_range(version):
    with pytest.raises(RuntimeError, match=re.escape(f"trl{SUPPORTED_TRL}")):
        check_trl_version(version)


def test_hooked_method_signatures():
    params = list(inspect.signature(RLOOTrainer._get_per_token_logps_and_entropies).parameters)
    _require(
        params[:7]
        == [
            "self",
            "model",
            "input_ids",
            "attention_mask",
            "logits_to_keep",
            "batch_size",
            "compute_entropy",
        ],
        f"_get_per_token_logps_and_entropies parameters are {params}",
    )
    params = list(inspect.signature(RLOOTrainer._generate_and_score_completions).parameters)
    _require(params == ["self", "inputs"], f"_generate_and_score_completions parameters are {params}")
    params = list(inspect.signature(RLOOTrainer._calculate_rewards).parameters)
    _require(
        params == ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        f"_calculate_rewards parameters are {params}",
    )


def test_generate_and_score_calls_the_policy_scoring_first_then_the_rewards(
    tmp_path, word_tokenizer, monkeypatch
):
    """The order and the arguments the hook assumes, recorded on trl's own methods."""
    path = save_tiny_llama(tmp_path / "tiny")
    events: list[tuple] = []
    original = RLOOTrainer._get_per_token_logps_and_entropies

    def recording(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        result = original(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        events.append(("score", model is self.model, attention_mask.clone(), logits_to_keep, result))
        return result

    def user_reward(prompts, completions, completion_ids, **kwargs):
        events.append(("reward", completion_ids))
        return [0.0] * len(completions)

    monkeypatch.setattr(RLOOTrainer, "_get_per_token_logps_and_entropies", recording)
    args = make_args(tmp_path, em_reward="token", beta=0.001)  # beta > 0: the reference is scored too
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(path),
        reward_funcs=user_reward,
        args=args,
        train_dataset=prompt_dataset(2),
        processing_class=word_tokenizer,
    )
    out = trainer._generate_and_score_completions(generation_batch(prompt_messages(2), 4))

    kinds = [e[0] for e in events]
    _require(
        kinds[:3] == ["score", "score", "reward"],
        f"call order is {kinds}, expected policy, reference, rewards",
    )
    _, is_policy, attention_mask, logits_to_keep, result = events[0]
    _require(is_policy, "the first scoring call is not on self.model (the sampling policy)")
    _require(not events[1][1], "the second scoring call (the KL reference) is on self.model")
    expected_keys = {
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "old_logps",
        "advantages",
    }
    _require(expected_keys <= set(out), f"_generate_and_score_completions returned keys {sorted(out)}")
    _require(
        torch.equal(attention_mask, torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)),
        "the policy scoring call's attention_mask is not prompt_mask + completion_mask",
    )
    _require(logits_to_keep == out["completion_ids"].size(1), "logits_to_keep is not the completion length")
    _require(isinstance(result, tuple) and len(result) == 3, "the scoring call no longer returns 3 values")
    logps, entropies, _ = result
    _require(
        entropies is not None and entropies.shape == logps.shape == out["completion_ids"].shape,
        "compute_entropy=True no longer returns [B, completion length] entropies",
    )
    _require(
        torch.allclose((logps * out["completion_mask"]).sum(1), out["old_logps"]),
        "old_logps is no longer the masked sum of the policy scoring call's log-probs",
    )
    completion_ids = events[2][1]
    lengths = out["completion_mask"].sum(1).tolist()
    _require(
        [len(c) for c in completion_ids] == lengths,
        "reward functions' completion_ids do not match the completion mask",
    )
