"""Evaluate a benchmark during training and keep the best weights.

One-shot EM's accuracy peaks near step 10 while its loss keeps falling (One-shot EM, sec. 3), and EM-FT
is early-stopped on a validation set (Unreasonable Effectiveness of EM, sec. 3.3): the training loss
cannot pick the checkpoint, a benchmark must. :class:`BenchmarkEarlyStoppingCallback` runs a user-given
``evaluate(model, tokenizer)`` every ``eval_steps`` optimizer steps, logs the score, saves the best model
and can stop early or restore the best weights at the end. :func:`em_hf.eval.arithmetic_evaluator` and
:func:`em_hf.eval.benchmark_evaluator` build such an ``evaluate`` on the evaluation harness.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from em_hf.utils.files import replace_folder
from em_hf.utils.validation import check_int

__all__ = ["BenchmarkEarlyStoppingCallback", "BenchmarkRecord"]

Evaluate = Callable[[Any, Any], float | Mapping[str, float]]


@dataclass(frozen=True)
class BenchmarkRecord:
    """One evaluation of :class:`BenchmarkEarlyStoppingCallback` (its ``history`` and ``best``).

    Parameters:
        step (`int`):
            The optimizer step (``trainer.state.global_step``) after which the model was scored; 0 is the
            model before training.
        value (`float`):
            The deciding metric (the callback's ``metric``).
        metrics (`dict[str, float]`):
            Everything ``evaluate`` returned (``{metric: value}`` when it returned a number).

    Examples:
        ``BenchmarkEarlyStoppingCallback.history`` holds one per evaluation, ``best`` the best one:

        >>> from em_hf.trainers.callbacks import BenchmarkRecord
        >>> BenchmarkRecord(step=10, value=0.4, metrics={"accuracy": 0.4, "entropy": 1.2}).value
        0.4
    """

    step: int
    value: float
    metrics: dict[str, float]


class BenchmarkEarlyStoppingCallback(TrainerCallback):
    """Every ``eval_steps`` optimizer steps: ``score = evaluate(model, tokenizer)``; keep the best.

    Parameters:
        evaluate (`Callable[[model, tokenizer], float | Mapping[str, float]]`):
            Scores the model: a number, or a dict of metrics of which ``metric`` decides. It is called in
            eval mode under ``torch.no_grad()``, on every process (make it deterministic, e.g. greedy or
            seeded sampling, so that the processes agree). :func:`em_hf.eval.arithmetic_evaluator` and
            :func:`em_hf.eval.benchmark_evaluator` build one.
        eval_steps (`int`, *optional*, defaults to `1`):
            Evaluate every this many optimizer steps.
        metric (`str`, *optional*, defaults to `"accuracy"`):
            The key of the deciding metric when ``evaluate`` returns a dict (and the name it is logged
            under when it returns a number).
        greater_is_better (`bool`, *optional*, defaults to `True`):
            Accuracy-like (`True`) or loss-like (`False`).
        patience (`int`, *optional*):
            Stop training after this many evaluations without improvement; `None` never stops.
        evaluate_at_start (`bool`, *optional*, defaults to `True`):
            Score the model before the first step (step 0: the base model).
        save_best (`bool`, *optional*, defaults to `True`):
            Save the best model (``save_pretrained``; the adapters only for PEFT) and the tokenizer into
            ``best_dir``, on the main process.
        restore_best_at_end (`bool`, *optional*, defaults to `False`):
            Copy the best trainable weights back into the model when training ends (they are kept in CPU
            memory: the trainable parameters only, i.e. the adapters for PEFT).
        best_dir (`str` or `os.PathLike`, *optional*):
            Where ``save_best`` writes; defaults to ``<output_dir>/best_checkpoint``.

    After training, ``history`` lists every evaluation and ``best`` the best one
    (:class:`BenchmarkRecord`). Each evaluation is also appended to ``trainer.state.log_history`` as
    ``{"step": ..., "benchmark/<metric>": ...}``.

    Examples:
        ``trainer = EntropyMinTrainer(..., callbacks=[callback])`` then calls it; here it is driven by
        hand with a stand-in ``evaluate`` that returns a fixed score:

        >>> from types import SimpleNamespace
        >>> from em_hf import BenchmarkEarlyStoppingCallback
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> callback = BenchmarkEarlyStoppingCallback(lambda model, tokenizer: 0.5, save_best=False)
        >>> state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=True)
        >>> callback.on_train_begin(None, state, None, model=model, processing_class=tokenizer)
        >>> callback.best
        BenchmarkRecord(step=0, value=0.5, metrics={'accuracy': 0.5})
        >>> state.log_history
        [{'step': 0, 'benchmark/accuracy': 0.5}]
    """

    def __init__(
        self,
        evaluate: Evaluate,
        eval_steps: int = 1,
        metric: str = "accuracy",
        greater_is_better: bool = True,
        patience: int | None = None,
        evaluate_at_start: bool = True,
        save_best: bool = True,
        restore_best_at_end: bool = False,
        best_dir: str | os.PathLike | None = None,
    ) -> None:
        if not callable(evaluate):
            raise TypeError("`evaluate` must be callable as evaluate(model, tokenizer) -> float or dict.")
        check_int("eval_steps", eval_steps)
        if patience is not None:
            check_int("patience", patience, hint=" (or None)")
        self.evaluate = evaluate
        self.eval_steps = eval_steps
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.evaluate_at_start = evaluate_at_start
        self.save_best = save_best
        self.restore_best_at_end = restore_best_at_end
        self.best_dir = None if best_dir is None else os.fspath(best_dir)
        self.history: list[BenchmarkRecord] = []
        self.best: BenchmarkRecord | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._evaluations_since_best = 0

    def _score(self, model, tokenizer) -> tuple[float, dict[str, float]]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                result = self.evaluate(model, tokenizer)
        finally:
            model.train(was_training)
        if isinstance(result, Mapping):
            if self.metric not in result:
                raise KeyError(
                    f"`evaluate` returned {sorted(result)} but the callback's metric is {self.metric!r}; "
                    "pass `metric=` naming one of them."
                )
            metrics = {key: float(value) for key, value in result.items()}
            value = metrics[self.metric]
        else:
            value = float(result)
            metrics = {self.metric: value}
        if not math.isfinite(value):
            raise ValueError(f"`evaluate` returned a non-finite {self.metric}: {value}.")
        return value, metrics

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best.value if self.greater_is_better else value < self.best.value

    def _run(self, args, state, control, model, tokenizer) -> None:
        value, metrics = self._score(model, tokenizer)
        record = BenchmarkRecord(state.global_step, value, metrics)
        self.history.append(record)
        state.log_history.append(
            {"step": state.global_step, **{f"benchmark/{key}": val for key, val in metrics.items()}}
        )
        if self._improves(value):
            self.best = record
            self._evaluations_since_best = 0
            self._best_weights = {
                name: param.detach().to("cpu", copy=True)
                for name, param in model.named_parameters()
                if param.requires_grad
            }
            if self.save_best and state.is_world_process_zero:
                target = os.path.abspath(self.best_dir or os.path.join(args.output_dir, "best_checkpoint"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                # written beside the target, then swapped in: a crash never leaves a half-saved best model
                staging = tempfile.mkdtemp(
                    prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target)
                )
                model.save_pretrained(staging)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
                replace_folder(staging, target)
        else:
            self._evaluations_since_best += 1
            if self.patience is not None and self._evaluations_since_best >= self.patience:
                control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.evaluate_at_start and not any(r.step == state.global_step for r in self.history):
            self._run(args, state, control, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._run(args, state, control, model, processing_class)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.restore_best_at_end and self._best_weights is not None:
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self._best_weights.items():
                    parameters[name].copy_(value.to(parameters[name].device))
