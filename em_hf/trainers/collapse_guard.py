r"""Stop an entropy-minimization run that is collapsing.

Minimizing entropy makes a model more confident; on a model whose confidence does not track correctness
it makes it confidently wrong, and the run collapses: within a few steps the sampled completions of a
prompt become one short, often repetitive answer, and benchmark accuracy falls while the loss keeps
improving (One-shot EM, sec. 4 "entropy minimization ... can fail"; Unreasonable Effectiveness of EM,
sec. 6 "EM helps only when the model's confidence is correlated with correctness").

:class:`CollapseGuardCallback` watches the signals that ``EntropyMinTrainer`` and ``EMRLOOTrainer`` log
every step:

- ``entropy``: mean token entropy of the step's sampled completions;
- ``completions/mean_length``: mean completion length (tokens);
- ``completions/distinct_answers``: distinct final answers among each prompt's completions, mean over
  prompts (``EntropyMinTrainer`` counts within each micro-batch, so with gradient accumulation among the
  completions that share one; ``EMRLOOTrainer`` within each generation batch);
- ``completions/repeated_ngram_share``: share of a completion's token n-grams that repeat an earlier one;
- ``benchmark/<metric>``: a benchmark score, when a ``BenchmarkEarlyStoppingCallback`` runs before it.

The collapse signature, with every threshold a field of :class:`CollapseGuardConfig` (the baseline is the
first logged step, i.e. the model before training):

1. **entropy falls fast** (necessary): at some step the entropy is at most ``1 - entropy_drop`` times the
   largest entropy of the ``window`` logged steps before it (default: one step removed 60% of it). A
   gradual decline, which is what EM is for, does not qualify.
2. **and** at least ``min_corroborating`` (default 0) of these hold at the current step:

   - fewer answers: ``distinct_answers <= distinct_ratio * baseline`` (and below the baseline);
   - shorter completions: ``mean_length <= (1 - length_drop) * baseline``;
   - more repetition: ``repeated_ngram_share >= baseline + repetition_rise``;
   - lower benchmark score: ``score <= best score so far - accuracy_drop`` (when one is logged).

The defaults come from the two one-shot runs of the default model that the README reports (lr 2e-5 and
2e-6, arithmetic, 16 samples of 48 tokens per step): at lr 2e-5, which collapses (greedy accuracy 26.7% ->
16.7% by step 3), the second step's entropy is 38% of the first's and completions are 30% shorter; at lr
2e-6, which does not (greedy accuracy within 3.4 points over 10 steps), no step keeps less than 45% of
the previous step's entropy, although the entropy falls by 93% over the 10 steps. A rerun of the lr 2e-5
run with the distinct-answer and repetition signals logged (greedy 26.7% -> 21.7% after step 1 -> 23.3%
after step 2) kept 34% of the entropy at step 2 while its completions were longer, its distinct answers
unchanged and its repeated 4-gram share up by only 0.10: the entropy cliff comes a step before the
other symptoms, and on this model a step is worth 5 points of accuracy. So by default the entropy cliff
alone is the signature and the other signals are evidence; ``min_corroborating=1`` waits for one of
them (a step later in the measured runs).

When the signature appears the guard warns once, naming each signal's baseline and current value, and
then, by ``action``: ``"warn"`` goes on, ``"stop"`` stops training after this step, ``"restore"`` stops
and copies back the best weights it kept: the best-scoring ones when a benchmark is logged, otherwise the
last weights whose rollouts showed no symptom (the trainable parameters only, kept in CPU memory).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from transformers import TrainerCallback

from em_hf.utils.answers import extract_answer
from em_hf.utils.validation import check_choice, check_int, check_known_keys, check_number

__all__ = [
    "COLLAPSE_ACTIONS",
    "CollapseGuardCallback",
    "CollapseGuardConfig",
    "CollapseVerdict",
    "completion_collapse_metrics",
    "detect_collapse",
    "distinct_answers_per_group",
    "repeated_ngram_share",
]

logger = logging.getLogger(__name__)

COLLAPSE_ACTIONS = ("warn", "stop", "restore")
ENTROPY, LENGTH = "entropy", "completions/mean_length"
DISTINCT, REPETITION = "completions/distinct_answers", "completions/repeated_ngram_share"


# --------------------------------------------------------------------------------------- the signals
def repeated_ngram_share(rows: Sequence[Sequence[int]], n: int = 4) -> float:
    """Mean over completions of the share of their token n-grams that already occurred earlier in the same
    completion (0: no repetition; near 1: one phrase repeated). Completions shorter than ``n`` tokens have
    no n-gram and are left out; 0.0 when none has one.

    Examples:
        >>> from em_hf.trainers.collapse_guard import repeated_ngram_share
        >>> repeated_ngram_share([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4]], n=2)  # (3/5 + 0/3) / 2
        0.3
    """
    check_int("n", n)
    shares = []
    for row in rows:
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        if grams:
            shares.append((len(grams) - len(set(grams))) / len(grams))
    return sum(shares) / len(shares) if shares else 0.0


def distinct_answers_per_group(texts: Sequence[str], groups: Sequence[Any]) -> float:
    """Mean over prompts (``groups[i]`` names the prompt of ``texts[i]``) of the number of distinct final
    answers (:func:`em_hf.utils.answers.extract_answer`; "no answer" counts as one more) among its
    completions.

    Examples:
        >>> from em_hf.trainers.collapse_guard import distinct_answers_per_group
        >>> distinct_answers_per_group(["so 3", "3", "it is 4", "5", "5"], ["a", "a", "a", "b", "b"])
        1.5
    """
    if len(texts) != len(groups):
        raise ValueError(f"`texts` ({len(texts)}) and `groups` ({len(groups)}) must have the same length.")
    if not texts:
        raise ValueError("`texts` is empty: give at least one completion.")
    answers: dict[Any, set] = {}
    for text, group in zip(texts, groups, strict=True):
        answers.setdefault(group, set()).add(extract_answer(text))
    return sum(len(values) for values in answers.values()) / len(answers)


def completion_collapse_metrics(
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    ngram: int = 4,
) -> dict[str, float]:
    """``completions/distinct_answers`` and ``completions/repeated_ngram_share`` of a batch in trl's layout
    (prompts [B, P] left-padded, completions [B, C] with a mask through the first EOS); rows with the same
    prompt tokens form a group.

    Examples:
        >>> import torch
        >>> from em_hf.trainers.collapse_guard import completion_collapse_metrics
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> _, tokenizer = tiny_llama_and_tokenizer()
        >>> prompt = torch.tensor([[15, 3], [15, 3]]); completion = torch.tensor([[3, 3, 3, 3], [4, 1, 0, 0]])
        >>> completion_collapse_metrics(tokenizer, prompt, torch.ones_like(prompt), completion,
        ...                             torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), ngram=2)
        {'completions/distinct_answers': 2.0, 'completions/repeated_ngram_share': 0.3333333333333333}
    """
    keep = completion_mask.bool().cpu()
    ids = completion_ids.cpu()
    rows = [ids[i][keep[i]].tolist() for i in range(ids.shape[0])]
    prompt_keep = prompt_mask.bool().cpu()
    prompts = prompt_ids.cpu()
    groups = [tuple(prompts[i][prompt_keep[i]].tolist()) for i in range(prompts.shape[0])]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return {
        DISTINCT: distinct_answers_per_group(texts, groups),
        REPETITION: repeated_ngram_share(rows, ngram),
    }


# --------------------------------------------------------------------------------------- detection
@dataclass
class CollapseGuardConfig:
    """The thresholds of the collapse signature (see the module docstring for the rule).

    Parameters:
        window (`int`, *optional*, defaults to `1`):
            The entropy drop is measured against the largest entropy of this many logged steps before.
        entropy_drop (`float`, *optional*, defaults to `0.6`):
            Fraction of the entropy lost within ``window`` steps that counts as a collapse, in (0, 1).
        distinct_ratio (`float`, *optional*, defaults to `0.5`):
            Fewer answers: distinct final answers per prompt at most this times the baseline.
        length_drop (`float`, *optional*, defaults to `0.25`):
            Shorter completions: mean length at most ``1 - length_drop`` times the baseline.
        repetition_rise (`float`, *optional*, defaults to `0.2`):
            More repetition: repeated n-gram share at least the baseline plus this.
        accuracy_drop (`float`, *optional*, defaults to `0.03`):
            Lower score: the logged benchmark score at least this much under the best so far (as a fraction:
            0.03 is 3 points of accuracy).
        min_corroborating (`int`, *optional*, defaults to `0`):
            How many of the four corroborating symptoms must hold together with the entropy drop (0: the
            entropy drop alone; the others are then evidence in the warning).
        metric (`str` or `None`, *optional*, defaults to `"accuracy"`):
            The benchmark score read from ``benchmark/<metric>`` in the trainer's log history; `None`
            ignores any benchmark (the label-free signals only).

    Examples:
        >>> from em_hf.trainers.collapse_guard import CollapseGuardConfig
        >>> CollapseGuardConfig(entropy_drop=0.5).window
        1
    """

    window: int = 1
    entropy_drop: float = 0.6
    distinct_ratio: float = 0.5
    length_drop: float = 0.25
    repetition_rise: float = 0.2
    accuracy_drop: float = 0.03
    min_corroborating: int = 0
    metric: str | None = "accuracy"

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> CollapseGuardConfig:
        """The config from keyword arguments, an unknown key refused with the known ones named."""
        check_known_keys("kwargs", kwargs, {f.name for f in fields(cls)}, "CollapseGuardConfig fields")
        return cls(**kwargs)

    def __post_init__(self) -> None:
        check_int("window", self.window)
        check_number("entropy_drop", self.entropy_drop, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("distinct_ratio", self.distinct_ratio, low=0.0, high=1.0, high_open=True)
        check_number("length_drop", self.length_drop, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("repetition_rise", self.repetition_rise, low=0.0, high=1.0, low_open=True)
        check_number("accuracy_drop", self.accuracy_drop, low=0.0, low_open=True)
        check_int(
            "min_corroborating", self.min_corroborating, minimum=0, hint=" (of 4 corroborating symptoms)"
        )
        if self.min_corroborating > 4:
            raise ValueError(f"`min_corroborating` must be at most 4, got {self.min_corroborating}.")


@dataclass(frozen=True)
class CollapseVerdict:
    """What :func:`detect_collapse` found at one logged step.

    Parameters:
        step (`int`):
            The step of the last record.
        collapsed (`bool`):
            Whether the collapse signature holds.
        symptoms (`dict[str, bool]`):
            Each symptom: ``entropy`` (the necessary fast drop), ``distinct_answers``, ``length``,
            ``repetition``, ``accuracy``; a symptom whose signal is not logged is absent.
        evidence (`list[str]`):
            One line per signal: its baseline, its current value and the threshold.

    Examples:
        >>> from em_hf.trainers.collapse_guard import CollapseGuardConfig, detect_collapse
        >>> history = [
        ...     {"step": 1, "entropy": 0.37, "completions/mean_length": 28.0},
        ...     {"step": 2, "entropy": 0.14, "completions/mean_length": 19.5},
        ... ]
        >>> verdict = detect_collapse(history, CollapseGuardConfig())
        >>> verdict.collapsed, verdict.symptoms
        (True, {'entropy': True, 'length': True})
    """

    step: int
    collapsed: bool
    symptoms: dict[str, bool]
    evidence: list[str] = field(default_factory=list)


def _values(history: Sequence[Mapping[str, float]], key: str) -> list[tuple[int, float]]:
    return [(int(r.get("step", i)), float(r[key])) for i, r in enumerate(history) if _finite(r.get(key))]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _entropy_symptom(history, config: CollapseGuardConfig) -> tuple[bool, str] | None:
    values = _values(history, ENTROPY)
    if not values:
        return None
    for i in range(1, len(values)):
        step, value = values[i]
        earlier = max(v for _, v in values[max(0, i - config.window) : i])
        if earlier > 0 and value <= (1 - config.entropy_drop) * earlier:
            return True, (
                f"entropy fell from {earlier:.4g} to {value:.4g} by step {step} "
                f"(-{100 * (1 - value / earlier):.0f}% within {config.window} steps; threshold "
                f"-{100 * config.entropy_drop:.0f}%); now {values[-1][1]:.4g}"
            )
    start, now = values[0][1], values[-1][1]
    return (
        False,
        f"entropy {start:.4g} -> {now:.4g} (no drop of {100 * config.entropy_drop:.0f}% within a window)",
    )


def detect_collapse(history: Sequence[Mapping[str, float]], config: CollapseGuardConfig) -> CollapseVerdict:
    """Apply the collapse signature (module docstring) to logged records, oldest first; each record is a
    trainer log (``{"step": ..., "entropy": ..., "completions/mean_length": ..., ...}``). The baseline of
    each signal is its first logged value.

    Parameters:
        history (`Sequence[Mapping[str, float]]`):
            The records; missing or non-finite signals are ignored.
        config (`CollapseGuardConfig`):
            The thresholds.

    Returns:
        `CollapseVerdict` for the last record.
    """
    if not history:
        raise ValueError("`history` is empty: give at least one logged record.")
    step = int(history[-1].get("step", len(history) - 1))
    symptoms: dict[str, bool] = {}
    evidence: list[str] = []
    entropy = _entropy_symptom(history, config)
    if entropy is not None:
        symptoms["entropy"], line = entropy
        evidence.append(line)
    checks = (
        ("distinct_answers", DISTINCT, lambda b: b * config.distinct_ratio, "<=", "distinct answers"),
        ("length", LENGTH, lambda b: b * (1 - config.length_drop), "<=", "mean completion length"),
        ("repetition", REPETITION, lambda b: b + config.repetition_rise, ">=", "repeated n-gram share"),
    )
    for name, key, threshold_of, op, label in checks:
        values = _values(history, key)
        if len(values) < 2:
            continue
        base, now = values[0][1], values[-1][1]
        threshold = threshold_of(base)
        hit = now <= threshold and now < base if op == "<=" else now >= threshold
        symptoms[name] = hit
        evidence.append(f"{label} {base:.4g} -> {now:.4g} (threshold {op} {threshold:.4g})")
    scores = _values(history, f"benchmark/{config.metric}") if config.metric is not None else []
    if len(scores) >= 2:
        best, now = max(v for _, v in scores), scores[-1][1]
        symptoms["accuracy"] = now <= best - config.accuracy_drop
        evidence.append(
            f"benchmark {config.metric} best {best:.4g} -> {now:.4g} "
            f"(threshold <= {best - config.accuracy_drop:.4g})"
        )
    corroborating = sum(hit for name, hit in symptoms.items() if name != "entropy")
    collapsed = bool(symptoms.get("entropy")) and corroborating >= config.min_corroborating
    return CollapseVerdict(step=step, collapsed=collapsed, symptoms=symptoms, evidence=evidence)


# --------------------------------------------------------------------------------------- the callback
class CollapseGuardCallback(TrainerCallback):
    """Warn, stop, or stop and restore when an entropy-minimization run shows the collapse signature.

    Parameters:
        config (`CollapseGuardConfig`, *optional*):
            The thresholds; defaults to ``CollapseGuardConfig()``.
        action (`str`, *optional*, defaults to `"stop"`):
            ``"warn"``: warn once and go on; ``"stop"``: warn and stop training after the step;
            ``"restore"``: warn, stop and copy back the best weights (module docstring).

    It reads the trainer's logs (``on_log``), so it checks every ``logging_steps`` (``EntropyMinConfig``
    logs every step by default). A benchmark score enters when a
    :class:`~em_hf.trainers.BenchmarkEarlyStoppingCallback` placed BEFORE the guard in ``callbacks``
    appends ``benchmark/<metric>`` to the log history. After training, ``history`` holds the records it
    saw, ``verdict`` the last :class:`CollapseVerdict` and ``fired_at`` the step it fired at (or `None`).
    ``EntropyMinTrainer`` adds one itself when ``args.collapse_guard`` is set (the default of
    ``EntropyMinConfig.one_shot()``).

    Examples:
        Driven by hand with two logged steps whose entropy and length fall:

        >>> import warnings
        >>> from types import SimpleNamespace
        >>> from em_hf.trainers.collapse_guard import CollapseGuardCallback
        >>> guard = CollapseGuardCallback(action="stop")
        >>> state, control = SimpleNamespace(global_step=1, log_history=[]), SimpleNamespace()
        >>> guard.on_log(None, state, control, logs={"entropy": 0.37, "completions/mean_length": 28.0})
        >>> state.global_step = 2
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     guard.on_log(None, state, control, logs={"entropy": 0.14, "completions/mean_length": 19.5})
        >>> guard.fired_at, control.should_training_stop, "collapse" in str(caught[0].message)
        (2, True, True)
    """

    def __init__(self, config: CollapseGuardConfig | None = None, action: str = "stop") -> None:
        if config is not None and not isinstance(config, CollapseGuardConfig):
            raise TypeError(f"`config` must be a CollapseGuardConfig, got {type(config).__name__}.")
        self.config = config or CollapseGuardConfig()
        self.action = check_choice("action", action, COLLAPSE_ACTIONS)
        self.history: list[dict[str, float]] = []
        self.verdict: CollapseVerdict | None = None
        self.fired_at: int | None = None
        self.restored_from: int | None = None
        self._pending: tuple[int, dict[str, torch.Tensor]] | None = None  # weights the rollouts come from
        self._best: tuple[int, dict[str, torch.Tensor]] | None = None
        self._best_score: float | None = None

    @staticmethod
    def _snapshot(model) -> dict[str, torch.Tensor]:
        return {
            name: param.detach().to("cpu", copy=True)
            for name, param in model.named_parameters()
            if param.requires_grad
        }

    def _score_at(self, state, step: int) -> float | None:
        if self.config.metric is None:
            return None
        key = f"benchmark/{self.config.metric}"
        for entry in reversed(state.log_history):
            if entry.get("step") == step and _finite(entry.get(key)):
                return float(entry[key])
        return None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.action == "restore" and model is not None and self._best is None:
            self._best = (state.global_step, self._snapshot(model))
            score = self._score_at(state, state.global_step)
            self._best_score = score

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        # The rollouts of the coming step are sampled from these weights: kept until its log is seen.
        if self.action == "restore" and model is not None and self._best_score is None:
            self._pending = (state.global_step, self._snapshot(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.action != "restore" or model is None:
            return
        score = self._score_at(state, state.global_step)  # scored on these weights, before the guard
        if score is not None and (self._best_score is None or score > self._best_score):
            self._best, self._best_score, self._pending = (
                (state.global_step, self._snapshot(model)),
                score,
                None,
            )

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        logs = logs or {}
        if not any(key in logs for key in (ENTROPY, LENGTH, DISTINCT, REPETITION)):
            return  # e.g. the end-of-training summary
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if _finite(v)}}
        score = self._score_at(state, state.global_step)
        if score is not None:
            record[f"benchmark/{self.config.metric}"] = score
        self.history.append(record)
        self.verdict = detect_collapse(self.history, self.config)
        healthy = not any(self.verdict.symptoms.values())
        if healthy and self._pending is not None and self._best_score is None:
            self._best = self._pending  # the rollouts of these weights showed no symptom
        self._pending = None
        if not self.verdict.collapsed or self.fired_at is not None:
            return
        self.fired_at = state.global_step
        message = self._message(state.global_step)
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
        if self.action in ("stop", "restore"):
            control.should_training_stop = True
        if self.action == "restore" and self._best is not None and model is not None:
            self.restored_from = self._best[0]
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self._best[1].items():
                    parameters[name].copy_(value.to(parameters[name].device))

    def _message(self, step: int) -> str:
        hits = [name for name, hit in self.verdict.symptoms.items() if hit]
        then = {
            "warn": "training goes on (action='warn')",
            "stop": "training stops after this step (action='stop')",
            "restore": "training stops and the weights of step "
            f"{self._best[0] if self._best else '?'} are restored (action='restore')",
        }[self.action]
        lines = "\n  ".join(self.verdict.evidence)
        return (
            f"Entropy-minimization collapse at step {step}: {', '.join(hits)}. The model grows confident "
            f"without staying right (see em_hf.trainers.collapse_guard); {then}. Evidence:\n  {lines}\n"
            f"Thresholds: {asdict(self.config)}."
        )
