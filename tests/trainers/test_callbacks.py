"""BenchmarkEarlyStoppingCallback: evaluation during training, best checkpoint, early stop, restore."""

from __future__ import annotations

import math

import pytest
import torch

from em_hf.trainers.callbacks import BenchmarkEarlyStoppingCallback
from tests.helpers import make_em_trainer

PROMPTS = ["Compute 1 + 2 .", "Compute 3 - 1 .", "the answer is", "Reply with just the number"]


def _trainer(tmp_path, callback, max_steps=4):
    return make_em_trainer(tmp_path, PROMPTS, [callback], max_steps=max_steps)


class ScriptedBenchmark:
    """Returns the scripted scores in turn and keeps a copy of the weights it was shown each time."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.weights = []
        self.modes = []

    def __call__(self, model, tokenizer):
        assert tokenizer is not None
        self.modes.append((model.training, torch.is_grad_enabled()))
        self.weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return {"accuracy": self.scores.pop(0), "other": 1.0}


def test_evaluates_every_n_steps_saves_and_restores_the_best(tmp_path):
    bench = ScriptedBenchmark([0.1, 0.5, 0.3])  # at the start (step 0), step 2 and step 4
    callback = BenchmarkEarlyStoppingCallback(bench, eval_steps=2, restore_best_at_end=True)
    trainer = _trainer(tmp_path, callback)
    trainer.train()
    assert [(r.step, r.value) for r in callback.history] == [(0, 0.1), (2, 0.5), (4, 0.3)]
    assert callback.best.step == 2 and callback.best.metrics == {"accuracy": 0.5, "other": 1.0}
    assert all(mode == (False, False) for mode in bench.modes)  # eval mode, no grad
    # The weights changed between evaluations, and the model ends with the step-2 weights.
    assert not torch.equal(bench.weights[1]["lm_head.weight"], bench.weights[2]["lm_head.weight"])
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), bench.weights[1][name], rtol=0, atol=0)
    assert (tmp_path / "out" / "best_checkpoint" / "config.json").exists()
    assert (tmp_path / "out" / "best_checkpoint" / "tokenizer_config.json").exists()
    logged = [e for e in trainer.state.log_history if "benchmark/accuracy" in e]
    assert [(e["step"], e["benchmark/accuracy"]) for e in logged] == [(0, 0.1), (2, 0.5), (4, 0.3)]


def test_patience_stops_training(tmp_path):
    bench = ScriptedBenchmark([0.4, 0.6, 0.5, 0.5, 0.9, 0.9])
    callback = BenchmarkEarlyStoppingCallback(
        bench, eval_steps=1, patience=2, save_best=False, metric="accuracy"
    )
    trainer = _trainer(tmp_path, callback, max_steps=5)
    trainer.train()
    # best at step 1; steps 2 and 3 do not improve -> stop after step 3
    assert trainer.state.global_step == 3
    assert [r.step for r in callback.history] == [0, 1, 2, 3]
    assert not (tmp_path / "out" / "best_checkpoint").exists()


def test_lower_is_better_and_float_scores(tmp_path):
    scores = iter([3.0, 2.0, 2.5])
    callback = BenchmarkEarlyStoppingCallback(
        lambda m, t: next(scores), eval_steps=1, metric="loss", greater_is_better=False, save_best=False
    )
    _trainer(tmp_path, callback, max_steps=2).train()
    assert callback.best.step == 1 and callback.best.metrics == {"loss": 2.0}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"evaluate": 3}, TypeError, "`evaluate` must be callable"),
        ({"eval_steps": 0}, ValueError, "`eval_steps` must be an integer >= 1"),
        ({"patience": 0}, ValueError, "`patience` must be an integer >= 1 \\(or None\\)"),
    ],
)
def test_argument_errors(kwargs, error, message):
    arguments = {"evaluate": lambda m, t: 0.0, **kwargs}
    with pytest.raises(error, match=message):
        BenchmarkEarlyStoppingCallback(**arguments)


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [({"acc": 1.0}, KeyError, "pass `metric=`"), (math.nan, ValueError, "non-finite accuracy")],
)
def test_bad_scores_fail_loudly(tmp_path, result, error, message):
    callback = BenchmarkEarlyStoppingCallback(lambda m, t: result, save_best=False)
    with pytest.raises(error, match=message):
        _trainer(tmp_path, callback, max_steps=1).train()
