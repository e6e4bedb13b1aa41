"""Argument and input checks used by every layer of em_hf (the ONE place they are written).

Each check raises early with a message that names the argument, the allowed values and, where
there is one, the fix. Numbers never accept ``bool`` (``True`` is an ``int`` in Python) and never
accept NaN or infinities.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = [
    "MIN_TEMPERATURE",
    "check_adaptive_temperature_arguments",
    "check_choice",
    "check_em_inf_arguments",
    "check_finite_scores",
    "check_float_tensor",
    "check_generation_kwargs",
    "check_int",
    "check_labels",
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
    0 < alpha <= 1, threshold >= 0, MIN_TEMPERATURE <= tau_min < tau_max (temperatures),
    max_iter >= 1, tol > 0."""
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
    threshold = check_number("threshold", threshold, low=0.0)
    low = check_temperature(tau_min, name="tau_min")
    high = check_temperature(tau_max, name="tau_max")
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


# The smallest temperature the ops accept: 1/T stays finite in float32 and the entropy gradient
# (1/T) p (log p + H), at most (1/T)(1/e + log V), stays below float32's maximum for any V < 2**31.
MIN_TEMPERATURE = 1e-37


def _real_scalar(value: Any) -> float | None:
    """``float(value)`` for a real scalar that is not a bool (Python and NumPy ints and floats);
    None for anything else."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python and NumPy bools
        return None
    return float(value) if isinstance(value, numbers.Real) else None


def _check_temperature_value(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    if value < MIN_TEMPERATURE:
        raise ValueError(
            f"`{name}` must be >= {MIN_TEMPERATURE:g}, got {value!r}: below it 1/{name} overflows the "
            "float32 entropy gradient. Use a larger value (the ops subtract each row's maximum first, so "
            "any value from there on is computed exactly)."
        )
    return value


def check_temperature(
    temperature: Any,
    *,
    name: str = "temperature",
    per_row: tuple[int, ...] | None = None,
    differentiable: bool = False,
) -> float | torch.Tensor:
    """Check a temperature and return it normalized: a ``float``, or a tensor where one is allowed.

    One rule for every op and processor: a temperature is a real number > 0 and >=
    ``MIN_TEMPERATURE`` (Python or NumPy ``int``/``float``, or a 0-dim tensor; never a ``bool``).
    ``per_row`` (the logits' leading shape) also admits a floating tensor broadcastable to
    ``per_row + (1,)``, one temperature per row. A tensor that requires grad is admitted only where
    the op differentiates through it (``differentiable``); elsewhere it would silently get no
    gradient, so it is refused. Each cause has its own message naming the argument and the fix.
    """
    if isinstance(temperature, torch.Tensor):
        if not temperature.is_floating_point():
            raise TypeError(
                f"`{name}` must be a floating-point tensor, got {temperature.dtype}; use `{name}.float()`."
            )
        if temperature.requires_grad and not differentiable:
            raise ValueError(
                f"`{name}` requires grad, but this op gives it no gradient; pass `{name}.detach()` (or use "
                f"`token_entropy`, which differentiates through a tensor `{name}`)."
            )
        if temperature.dim() == 0 and not temperature.requires_grad:
            return _check_temperature_value(name, float(temperature))
        if per_row is None:
            raise TypeError(
                f"`{name}` must be one number here, got a tensor of shape {tuple(temperature.shape)}; this "
                f"op takes one temperature for all rows (`float({name})` for a single value)."
            )
        target = (*tuple(per_row or ()), 1)
        try:
            fits = torch.broadcast_shapes(tuple(temperature.shape), target) == target
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"`{name}` of shape {tuple(temperature.shape)} does not broadcast to the logits' rows "
                f"{target}; give one temperature per row, shape {target}."
            )
        values = temperature.detach()
        if not bool(torch.isfinite(values).all() & (values > 0).all()):
            raise ValueError(f"`{name}` must be a finite number > 0 in every entry.")
        if bool((values < MIN_TEMPERATURE).any()):
            _check_temperature_value(name, float(values.min()))
        return temperature
    value = _real_scalar(temperature)
    if value is None:
        raise TypeError(
            f"`{name}` must be a real number, got {type(temperature).__name__} {temperature!r}"
            + ("; a bool is not a temperature, pass e.g. 1.0." if isinstance(temperature, bool) else ".")
        )
    return _check_temperature_value(name, value)


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


def check_labels(
    labels: Any, shape: tuple[int, ...], vocab: int, ignore_index: int, shape_name: str, hint: str = ""
) -> None:
    """Token labels: an integer tensor of ``shape`` (described as ``shape_name``) with values in
    ``[0, vocab)`` or ``ignore_index`` (``hint`` is appended to the shape message)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor or None, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"`labels` must be an integer tensor (int64), got {labels.dtype}; use `labels.long()`."
        )
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"`labels` must have shape {shape_name} = {tuple(shape)}, got {tuple(labels.shape)}{hint}."
        )
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if bool(bad.any()):
        value = labels[bad].flatten()[0].item()
        raise ValueError(f"`labels` must be in [0, {vocab}) or {ignore_index} (ignored), found {value}.")


def check_known_keys(name: str, kwargs: Any, known: set[str], what: str) -> None:
    """``kwargs`` must be a dict whose keys are in ``known`` (``what`` names them in the error, with a
    "did you mean" for each close miss)."""
    if not isinstance(kwargs, dict):
        raise TypeError(f"`{name}` must be a dict of {what}, got {type(kwargs).__name__}.")
    import difflib

    unknown = sorted(str(key) for key in kwargs if key not in known)
    if unknown:
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        suggestions = ", ".join(f"{key!r} -> {match[0]!r}" for key, match in hints.items() if match)
        raise ValueError(
            f"`{name}` has keys that are not {what}: {unknown}"
            + (f" (did you mean {suggestions}?)" if suggestions else "")
            + f"; the known ones: {sorted(known)}."
        )


def check_generation_kwargs(name: str, kwargs: Any) -> None:
    """``kwargs`` must be a dict whose keys are ``transformers.GenerationConfig`` fields (``GenerationConfig``
    itself keeps unknown keys as attributes that nothing reads, so a typo would pass silently)."""
    if kwargs is None:
        return
    from transformers import GenerationConfig

    known = set(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}
    check_known_keys(name, kwargs, known, "transformers.GenerationConfig fields")


def parse_json_object(name: str, text: str) -> dict[str, Any]:
    """A dict field given as JSON text (how ``HfArgumentParser`` passes it from the command line)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{name}` must be a dict or its JSON text, got {text!r} ({error}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be a dict or its JSON text (an object), got {text!r}.")
    return value


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
