"""The collapse guard: its signals, the collapse signature on scripted sequences, and its actions on a
tiny model (warn once, stop, stop and restore the best weights)."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from transformers import TrainerCallback

from em_hf.trainers import EntropyMinConfig
from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback
from em_hf.trainers.collapse_guard import (
    CollapseGuardCallback,
    CollapseGuardConfig,
    detect_collapse,
    distinct_answers_per_group,
    repeated_ngram_share,
)
from tests.helpers import make_em_trainer, make_word_tokenizer

PROMPTS = ["Compute 1 + 2 .", "Compute 3 - 1 .", "the answer is", "Reply with just the number"]
SIGNAL_KEYS = (
    "entropy",
    "completions/mean_length",
    "completions/distinct_answers",
    "completions/repeated_ngram_share",
)


# ------------------------------------------------------------------------------------------ signals
def _repeat_share_reference(row, n):
    grams = Counter(tuple(row[i : i + n]) for i in range(len(row) - n + 1))
    total = sum(grams.values())
    return None if total == 0 else sum(count - 1 for count in grams.values()) / total


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_repeated_ngram_share_matches_a_counter(n):
    generator = torch.Generator().manual_seed(n)
    rows = [torch.randint(0, 4, (length,), generator=generator).tolist() for length in (0, 2, 5, 9, 17, 30)]
    shares = [s for s in (_repeat_share_reference(row, n) for row in rows) if s is not None]
    assert repeated_ngram_share(rows, n) == pytest.approx(sum(shares) / len(shares))
    assert repeated_ngram_share([[7] * 10], 4) == pytest.approx(6 / 7)
    assert repeated_ngram_share([[1, 2]], 4) == 0.0  # no 4-gram at all


def test_distinct_answers_per_group():
    texts = ["The answer is 3.", "3", "\\boxed{3}", "so 4", "no idea", "7", "7.0"]
    groups = ["a", "a", "a", "a", "a", "b", "b"]
    # group a: {3, 4, None} = 3; group b: {7} = 1
    assert distinct_answers_per_group(texts, groups) == 2.0
    with pytest.raises(ValueError, match="same length"):
        distinct_answers_per_group(["1"], ["a", "b"])


# ------------------------------------------------------------------------------------------ detection
def _history(entropy, length=None, distinct=None, repetition=None, accuracy=None):
    records = []
    for i, value in enumerate(entropy):
        record = {"step": i + 1, "entropy": value}
        for key, values in (
            ("completions/mean_length", length),
            ("completions/distinct_answers", distinct),
            ("completions/repeated_ngram_share", repetition),
            ("benchmark/accuracy", accuracy),
        ):
            if values is not None:
                record[key] = values[i]
        records.append(record)
    return records


def _first_firing(history, config):
    for i in range(len(history)):
        if detect_collapse(history[: i + 1], config).collapsed:
            return history[i]["step"]
    return None


def test_rerun_with_all_signals_fires_at_step_two():
    # The rerun of the lr 2e-5 run (examples/collapse_guard_arithmetic.py): at step 2 only the entropy
    # has moved (34% of step 1's); longer completions, the same 5 answers, repetition +0.10.
    history = [
        {"step": 1, "entropy": 0.3361, "completions/distinct_answers": 5.0, "completions/mean_length": 19.31,
         "completions/repeated_ngram_share": 0.0678},
        {"step": 2, "entropy": 0.1148, "completions/distinct_answers": 5.0, "completions/mean_length": 22.81,
         "completions/repeated_ngram_share": 0.1715},
    ]  # fmt: skip
    verdict = detect_collapse(history, CollapseGuardConfig())
    assert verdict.collapsed
    assert verdict.symptoms == {
        "entropy": True,
        "distinct_answers": False,
        "length": False,
        "repetition": False,
    }
    assert not detect_collapse(history, CollapseGuardConfig(min_corroborating=1)).collapsed


def test_readme_collapse_fires_at_step_two():
    # The README's one-shot run at lr 2e-5: entropy and completion length per step.
    history = _history([0.3672, 0.1398, 0.0055, 0.0016, 0.0005], length=[27.9, 19.5, 15.0, 15.0, 15.0])
    assert _first_firing(history, CollapseGuardConfig()) == 2
    verdict = detect_collapse(history[:2], CollapseGuardConfig())
    assert verdict.symptoms == {"entropy": True, "length": True}
    assert any("27.9 -> 19.5" in line for line in verdict.evidence)


def test_slow_entropy_decline_does_not_fire():
    # 20% less entropy per step for 10 steps, even with shorter completions: not a collapse (0.8**3 > 0.5).
    history = _history([0.8**i for i in range(10)], length=[30 - 1.5 * i for i in range(10)])
    assert _first_firing(history, CollapseGuardConfig()) is None
    # Within a window of 4 steps the same decline halves the entropy by step 5 (0.8**4 = 0.41); the length
    # reaches its threshold (0.75 * 30 = 22.5) at step 6, and the guard fires then.
    slower = CollapseGuardConfig(window=4, entropy_drop=0.5, min_corroborating=1)
    assert detect_collapse(history[:5], slower).symptoms["entropy"]
    assert _first_firing(history, slower) == 6


def test_readme_slow_run_does_not_fire():
    # The README's one-shot run at lr 2e-6 (greedy accuracy within 3.4 points over 10 steps).
    entropy = [0.3672, 0.3132, 0.2899, 0.3309, 0.2420, 0.1568, 0.1047, 0.0841, 0.0376, 0.0264]
    length = [27.9, 22.2, 23.0, 22.1, 21.2, 17.6, 18.0, 18.0, 15.0, 15.0]
    history = _history(entropy, length=length)
    assert _first_firing(history, CollapseGuardConfig()) is None
    assert detect_collapse(history, CollapseGuardConfig()).symptoms == {"entropy": False, "length": True}


def test_entropy_drop_alone_does_not_fire_and_corroboration_is_sticky():
    flat = [30.0] * 6
    history = _history([1.0, 0.3, 0.2, 0.2, 0.2, 0.2], length=flat, distinct=[4, 4, 4, 4, 1, 1])
    # By default the entropy cliff at step 2 is the signature.
    assert _first_firing(history, CollapseGuardConfig()) == 2
    # With one corroborating symptom required: the answers collapse to one at step 5, and it fires then.
    strict = CollapseGuardConfig(min_corroborating=1)
    assert _first_firing(history, strict) == 5
    verdict = detect_collapse(history, strict)
    assert verdict.symptoms == {"entropy": True, "distinct_answers": True, "length": False}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"min_corroborating": 1}, 3),  # accuracy 0.30 -> 0.25 at step 3 (best 0.30, drop 0.05 >= 0.03)
        ({"min_corroborating": 1, "metric": None}, None),  # label-free only: nothing corroborates
        ({"min_corroborating": 1, "accuracy_drop": 0.1}, None),
        ({}, 2),  # the entropy cliff alone
    ],
)
def test_benchmark_score_corroborates(kwargs, expected):
    history = _history([1.0, 0.35, 0.3, 0.3], accuracy=[0.3, 0.3, 0.25, 0.25])
    assert _first_firing(history, CollapseGuardConfig(**kwargs)) == expected


def test_repetition_and_min_corroborating():
    history = _history([1.0, 0.35], length=[30.0, 20.0], repetition=[0.05, 0.3])
    assert detect_collapse(history, CollapseGuardConfig(min_corroborating=2)).collapsed
    assert not detect_collapse(
        history, CollapseGuardConfig(min_corroborating=2, repetition_rise=0.3)
    ).collapsed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "`window` must be an integer >= 1"),
        ({"entropy_drop": 1.0}, "`entropy_drop` must be a finite number in \\(0.0, 1.0\\)"),
        ({"min_corroborating": 5}, "`min_corroborating` must be at most 4"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CollapseGuardConfig(**kwargs)


GUARD_JSON = '{"entropy_drop": 0.5, "min_corroborating": 1}'


def test_collapse_guard_kwargs_from_the_command_line():
    """HfArgumentParser passes the dict field as JSON text; the config reads it into the guard's config."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(EntropyMinConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--use_cpu", "--report_to", "none", "--collapse_guard_kwargs", GUARD_JSON]
    )
    config = args.collapse_guard_config()
    assert (config.entropy_drop, config.min_corroborating, config.window) == (0.5, 1, 1)
    assert (
        EntropyMinConfig(output_dir="x", report_to=[], use_cpu=True).collapse_guard_config()
        == CollapseGuardConfig()
    )


def test_callback_and_config_errors():
    with pytest.raises(ValueError, match="`action` must be 'warn' or 'stop' or 'restore'"):
        CollapseGuardCallback(action="halt")
    with pytest.raises(ValueError, match="`collapse_guard_kwargs`: `length_drop` must be"):
        EntropyMinConfig(
            output_dir="x", collapse_guard_kwargs={"length_drop": 2.0}, report_to=[], use_cpu=True
        )
    with pytest.raises(ValueError, match="'entropy_dorp' -> 'entropy_drop'"):
        EntropyMinConfig(
            output_dir="x", collapse_guard_kwargs={"entropy_dorp": 0.5}, report_to=[], use_cpu=True
        )
    with pytest.raises(ValueError, match="`collapse_guard_kwargs` must be a dict or its JSON text"):
        EntropyMinConfig(
            output_dir="x", collapse_guard_kwargs="{entropy_drop: 0.5}", report_to=[], use_cpu=True
        )
    with pytest.raises(ValueError, match="`collapse_guard_action` must be"):
        EntropyMinConfig(output_dir="x", collapse_guard_action="halt", report_to=[], use_cpu=True)


# ------------------------------------------------------------------------------------------ on a tiny model
class ScriptedSignals(TrainerCallback):
    """Overwrites the logged signals with scripted values (the guard, later in the list, reads them)."""

    def __init__(self, entropy, length):
        self.entropy, self.length = list(entropy), list(length)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "entropy" in logs:
            logs["entropy"] = self.entropy[state.global_step - 1]
            logs["completions/mean_length"] = self.length[state.global_step - 1]
            logs["completions/distinct_answers"] = 2.0
            logs["completions/repeated_ngram_share"] = 0.0


class RecordingBenchmark:
    def __init__(self, scores):
        self.scores, self.weights = list(scores), []

    def __call__(self, model, tokenizer):
        self.weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return {"accuracy": self.scores.pop(0)}


def _trainer(tmp_path, callbacks, max_steps=5, **config):
    return make_em_trainer(
        tmp_path,
        PROMPTS,
        callbacks,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        max_completion_length=6,
        **config,
    )


COLLAPSING = {"entropy": [2.0, 1.9, 0.5, 0.4, 0.3], "length": [6.0, 6.0, 3.0, 3.0, 3.0]}  # fires at step 3


def test_trainer_logs_the_signals_and_a_healthy_run_goes_on(tmp_path):
    trainer = _trainer(tmp_path, None, max_steps=2, collapse_guard=True)
    assert isinstance(trainer.collapse_guard, CollapseGuardCallback)
    assert trainer.collapse_guard in trainer.callback_handler.callbacks
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 2 and all(key in e for e in logged for key in SIGNAL_KEYS)
    assert all(1.0 <= e["completions/distinct_answers"] <= 2.0 for e in logged)  # 2 samples per prompt
    assert all(0.0 <= e["completions/repeated_ngram_share"] <= 1.0 for e in logged)
    assert trainer.collapse_guard.fired_at is None and trainer.state.global_step == 2
    assert len(trainer.collapse_guard.history) == 2


def test_one_shot_preset_has_the_guard_on_and_a_flag_turns_it_off(tmp_path):
    assert EntropyMinConfig.one_shot(output_dir="x", report_to=[], use_cpu=True).collapse_guard is True
    assert EntropyMinConfig(output_dir="x", report_to=[], use_cpu=True).collapse_guard is False
    assert _trainer(tmp_path, None, max_steps=1).collapse_guard is None
    off = EntropyMinConfig.one_shot(output_dir="x", collapse_guard=False, report_to=[], use_cpu=True)
    assert off.collapse_guard is False


@pytest.mark.parametrize("action", ["warn", "stop"])
def test_warns_once_and_stops_by_choice(tmp_path, action):
    guard = CollapseGuardCallback(action=action)
    trainer = _trainer(tmp_path, [ScriptedSignals(**COLLAPSING), guard])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught if "collapse at step" in str(w.message)]
    assert len(messages) == 1 and "entropy fell from 1.9 to 0.5 by step 3" in messages[0]
    assert guard.fired_at == 3
    assert trainer.state.global_step == (5 if action == "warn" else 3)


def test_restore_without_benchmark_restores_the_last_healthy_weights(tmp_path):
    guard = CollapseGuardCallback(action="restore")
    snapshots = []

    class Snapshot(TrainerCallback):  # the weights each step's rollouts are sampled from
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    trainer = _trainer(tmp_path, [Snapshot(), ScriptedSignals(**COLLAPSING), guard])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    # Steps 1 and 2 were healthy: step 2's rollouts came from the weights after step 1 (snapshots[1]).
    assert trainer.state.global_step == 3 and guard.restored_from == 1
    assert not torch.equal(snapshots[1]["lm_head.weight"], snapshots[2]["lm_head.weight"])
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), snapshots[1][name], rtol=0, atol=0)


def test_restore_with_benchmark_restores_the_best_scoring_weights(tmp_path):
    bench = RecordingBenchmark([0.2, 0.5, 0.4, 0.1, 0.1, 0.1])  # step 0 .. step 5; best after step 1
    benchmark = BenchmarkEarlyStoppingCallback(bench, save_best=False)
    guard = CollapseGuardCallback(action="restore")
    trainer = _trainer(tmp_path, [benchmark, ScriptedSignals(**COLLAPSING), guard])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert guard.fired_at == 3 and guard.restored_from == 1
    assert guard.history[-1]["benchmark/accuracy"] == 0.1
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), bench.weights[1][name], rtol=0, atol=0)


def test_emrloo_trainer_logs_the_signals_and_runs_the_guard(tmp_path):
    from em_hf.trainers.emrloo_trainer import EMRLOOTrainer
    from tests.trainers.emrloo_helpers import load_tiny_llama, make_args, prompt_dataset, save_tiny_llama

    path = save_tiny_llama(tmp_path / "tiny")
    guard = CollapseGuardCallback(action="stop")
    trainer = EMRLOOTrainer(
        model=load_tiny_llama(path),
        args=make_args(tmp_path, beta=0.0, max_steps=2),
        train_dataset=prompt_dataset(8),
        processing_class=make_word_tokenizer(),
        callbacks=[guard],
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "entropy" in e]
    assert len(logged) == 2 and all(key in e for e in logged for key in SIGNAL_KEYS)
    assert all(1.0 <= e["completions/distinct_answers"] <= 4.0 for e in logged)  # 4 samples per prompt
    assert [r["step"] for r in guard.history] == [1, 2]
