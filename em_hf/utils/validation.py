"""Argument and input checks used by every layer of em_hf (the ONE place they are written).

Each check raises early with a message that names the argument, the allowed values and, where
there is one, the fix. Numbers never accept ``bool`` (``True`` is an ``int`` in Python) and never
accept NaN or infinities.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "check_adaptive_temperature_arguments",
    "check_choice",
    "check_em_inf_arguments",
    "check_finite_scores",
    "check_float_tensor",
    "check_generation_kwargs",
    "check_int",
    "check_number",
    "check_pad_token_id",
    "check_positive_int",
    "check_prompt_dataset",
    "check_scores",
    "check_temperature",
    "is_real_number",
]


def is_real_number(value: Any) -> bool:
    """True for a finite Python ``int``/``float`` that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_number(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """Return ``float(value)`` if it is a finite real number in the given interval, else raise
    ``ValueError`` naming the argument and the allowed range (``hint`` is appended to the message)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    ok = is_real_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"`{name}` must be a finite number in {interval}{hint}, got {value!r}.")
    return float(value)


def check_int(name: str, value: int, *, minimum: int = 1, hint: str = "") -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) >= ``minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}{hint}, got {value!r}.")
    return value


def check_positive_int(name: str, value: int) -> int:
    """``check_int(name, value, minimum=1)``."""
    return check_int(name, value, minimum=1)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(choice) for choice in choices)
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    return value


def check_em_inf_arguments(
    threshold: float, n_steps: int, lr: float, kl_weight: float, optimizer: str
) -> tuple[float, int, float, float, str]:
    """The settings of EM-INF logit optimization, checked and normalized (numbers as ``float``):
    threshold >= 0, n_steps >= 1, lr > 0, kl_weight >= 0, optimizer 'adam' or 'sgd'."""
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    return (
        check_number("threshold", threshold, low=0.0),
        check_positive_int("n_steps", n_steps),
        check_number("lr", lr, low=0.0, low_open=True),
        check_number("kl_weight", kl_weight, low=0.0),
        optimizer,
    )


def check_adaptive_temperature_arguments(
    alpha: float, threshold: float, tau_min: float, tau_max: float, max_iter: int, tol: float
) -> tuple[float, float, float, float, int, float]:
    """The settings of adaptive temperature, checked and normalized (numbers as ``float``):
    0 < alpha <= 1, threshold >= 0, 0 < tau_min < tau_max, max_iter >= 1, tol > 0."""
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
    threshold = check_number("threshold", threshold, low=0.0)
    low = check_number("tau_min", tau_min, low=0.0, low_open=True)
    high = check_number("tau_max", tau_max, low=0.0, low_open=True)
    if low >= high:
        raise ValueError(f"`tau_min` ({tau_min}) must be smaller than `tau_max` ({tau_max}).")
    return (
        alpha,
        threshold,
        low,
        high,
        check_positive_int("max_iter", max_iter),
        check_number("tol", tol, low=0.0, low_open=True),
    )


def check_temperature(temperature: Any, *, allow_tensor: bool = False, name: str = "temperature") -> None:
    """A temperature is a finite number > 0. With ``allow_tensor`` it may also be a floating tensor
    (one temperature per row, broadcast against the logits) whose every entry is finite and > 0."""
    if isinstance(temperature, torch.Tensor):
        if not allow_tensor:
            raise TypeError(f"`{name}` must be a Python number here, got a tensor; pass `float({name})`.")
        if not temperature.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got {temperature.dtype}.")
        if not bool(torch.all(torch.isfinite(temperature) & (temperature > 0))):
            raise ValueError(f"`{name}` must be finite and > 0 in every entry.")
        return
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"`{name}` must be a number, got {type(temperature).__name__}.")
    check_number(name, temperature, low=0.0, low_open=True)


def check_float_tensor(value: Any, name: str) -> None:
    """``value`` must be a floating-point torch.Tensor (float32, float64, bfloat16 or float16)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor (float32, float64, bfloat16 or float16), "
            f"got {value.dtype}; cast it with `{name}.float()`."
        )


def check_scores(scores: torch.Tensor, owner: str) -> None:
    """A logits processor's input must be a floating [batch, vocab] tensor (NaN/+inf are caught by
    :func:`check_finite_scores` or by the entropy computation itself)."""
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(
            f"{owner} expects floating-point scores, got {getattr(scores, 'dtype', type(scores))}."
        )
    if scores.dim() != 2:
        raise ValueError(f"{owner} expects scores of shape [batch, vocab], got {tuple(scores.shape)}.")


def check_finite_scores(scores: torch.Tensor, owner: str) -> None:
    """Raise ``ValueError`` when ``scores`` contain NaN or +inf (-inf marks masked tokens)."""
    if bool(torch.isnan(scores).any()) or bool(torch.isposinf(scores).any()):
        raise ValueError(
            f"{owner} received scores containing NaN or +inf, for which the entropy is undefined; check the "
            "model's dtype (fp16 overflow) or a preceding logits processor."
        )


def check_generation_kwargs(name: str, kwargs: Any) -> None:
    """``kwargs`` must be a dict whose keys are ``transformers.GenerationConfig`` fields (``GenerationConfig``
    itself keeps unknown keys as attributes that nothing reads, so a typo would pass silently)."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise TypeError(f"`{name}` must be a dict of GenerationConfig fields, got {type(kwargs).__name__}.")
    import difflib

    from transformers import GenerationConfig

    known = set(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}
    unknown = sorted(str(key) for key in kwargs if key not in known)
    if unknown:
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        suggestions = ", ".join(f"{key!r} -> {match[0]!r}" for key, match in hints.items() if match)
        raise ValueError(
            f"`{name}` has keys that are not transformers.GenerationConfig fields: {unknown}"
            + (f" (did you mean {suggestions}?)" if suggestions else "")
            + "; see the GenerationConfig documentation for the fields."
        )


def check_pad_token_id(tokenizer: Any, model: Any) -> None:
    """The tokenizer's pad token id must index a row of the model's input embeddings (an id outside it
    fails deep inside the embedding lookup with ``IndexError: index out of range in self``)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if pad is None or rows is None:
        return
    if not 0 <= int(pad) < rows:
        raise ValueError(
            f"The tokenizer's pad token id {pad} is outside the model's vocabulary ({rows} embedding rows). "
            "Use a token the model has (e.g. `tokenizer.pad_token = tokenizer.eos_token`), or resize the "
            "embeddings after adding one: `model.resize_token_embeddings(len(tokenizer))`."
        )


def check_prompt_dataset(dataset: Any, name: str) -> None:
    """A prompt dataset (``datasets.Dataset`` or ``IterableDataset``) must have a ``prompt`` column and, when
    its length is known, at least one row."""
    if dataset is None:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"`{name}` has no 'prompt' column (columns: {columns}); rename the column holding the prompts, "
            "e.g. `dataset.rename_column('question', 'prompt')`."
        )
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: give at least one prompt.")
