"""Argument and input checks shared by the logits processors."""

from __future__ import annotations

import math

import torch


def check_scores(scores: torch.Tensor, owner: str) -> None:
    """A processor's input must be a floating [batch, vocab] tensor (NaN/+inf are caught by the
    entropy computation itself, which raises ``ValueError``)."""
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(
            f"{owner} expects floating-point scores, got {getattr(scores, 'dtype', type(scores))}."
        )
    if scores.dim() != 2:
        raise ValueError(f"{owner} expects scores of shape [batch, vocab], got {tuple(scores.shape)}.")


def check_number(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``float(value)`` if it is a finite real number in the given interval, else raise
    ``ValueError`` naming the argument and the allowed range."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"`{name}` must be a finite number in {interval}, got {value!r}.")
    return float(value)


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return value


def check_finite_scores(scores: torch.Tensor, owner: str) -> None:
    """Raise ``ValueError`` when ``scores`` contain NaN or +inf (-inf marks masked tokens)."""
    if bool(torch.isnan(scores).any()) or bool(torch.isposinf(scores).any()):
        raise ValueError(
            f"{owner} received scores containing NaN or +inf, for which the entropy is undefined; check the "
            "model's dtype (fp16 overflow) or a preceding logits processor."
        )
