"""Decoding-time entropy minimization of next-token logits: EM-INF and adaptive temperature.

Both work on scores ``[rows, vocab]`` (the logits of one decoding step), each row on its own, and
never differentiate the model. They are the functional forms behind
:class:`em_hf.EntropyMinLogitsProcessor` and :class:`em_hf.AdaptiveTemperatureLogitsWarper`.

**EM-INF** ("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 4,
eq. 5): the logits z are free parameters of a few gradient steps on

    L(z) = H(softmax(z)) + kl_weight * KL(p_orig || softmax(z)),
    dL/dz_v = -p_v (log p_v + H) + kl_weight * (p_v - p_orig_v)

(closed form; the KL gradient uses sum_v p_orig_v = 1), stopping for a row as soon as its entropy
is at or below the threshold delta. Unlike the released reference code (one entropy summed over the
whole batch, one stop for all rows), every row has its own entropy, its own stop and its own Adam
moments, so a row of a batch gives the same result as the same row alone.

**Adaptive temperature** (the same paper, Appendix B, Algorithm 1): per row with initial entropy
H0 > delta, bisect tau in [tau_min, tau_max] until |H(softmax(z / tau)) - H_target| < tol with
H_target = max(delta, alpha * H0), or until ``max_iter`` bisection steps are done (then the last
midpoint is used), and return m + (z - m) / tau with m the row's maximum: the distribution of
z / tau, with the top logit kept in place so that the values stay within the input dtype (z / tau
itself overflows float16 at z = 65000, tau = 0.5). Dividing by tau > 0 never reorders the logits.

**Finite outputs**: both functions return finite values wherever the input is finite, in the
input's dtype, on every backend; EM-INF raises ``ValueError`` when its steps overflow (a huge
``lr``) instead of returning +inf.

Backends: the compiled kernels of ``em_hf/ops/csrc`` (CPU, and CUDA where they were built; one
pass over a row per step) for float32/bfloat16/float16 scores, else PyTorch (float64, other
devices, or ``EM_HF_ENTROPY_BACKEND=torch``); :func:`em_hf.ops.backend` tells which.
"""

from __future__ import annotations

import math
import re
import textwrap

import torch

from em_hf.ops._extension import use_kernels
from em_hf.ops._torch_impl import accumulation_dtype
from em_hf.ops.entropy import SoftmaxEntropy, softmax_entropy
from em_hf.utils.validation import (
    check_adaptive_temperature_arguments,
    check_em_inf_arguments,
    check_finite_scores,
    check_scores,
)

__all__ = ["adaptive_temperature", "em_inf"]

# torch.optim.Adam's defaults, so that batch size 1 reproduces the reference procedure.
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8

# The documentation of the settings, shared by the functional forms and the logits processors of
# em_hf.generation: the entries of a "Parameters:" block, put in place by `document_parameters`.
EM_INF_PARAMETERS = """\
threshold (`float`, *optional*, defaults to `0.3`):
    The entropy floor delta >= 0 in nats: a row at or below it is left as it is from then
    on. 0.3 is the released scripts' value; the paper (section 4) uses 0.1 < delta < 0.5.
n_steps (`int`, *optional*, defaults to `3`):
    Gradient steps (>= 1) for a row that stays above the threshold. 3 in the released
    scripts; the paper (section 4) reports 5 to 15.
lr (`float`, *optional*, defaults to `0.1`):
    Step size (> 0), as in the released scripts.
kl_weight (`float`, *optional*, defaults to `0.001`):
    Weight (>= 0) of KL(p_orig || p), which keeps p near the model's distribution (section
    4, eq. 5; 0.001 to 0.05 in the released scripts).
optimizer (`str`, *optional*, defaults to `"adam"`):
    `"adam"` (torch's Adam with betas (0.9, 0.999) and eps 1e-8, the released scripts) or
    `"sgd"` (plain gradient descent, which never changes the argmax: Proposition 1)."""

ADAPTIVE_TEMPERATURE_PARAMETERS = """\
alpha (`float`, *optional*, defaults to `0.85`):
    Target ratio of entropies, in (0, 1]. 0.85 is the released scripts' value; the paper
    text (section 4) reports alpha in (0.4, 0.6) as best.
threshold (`float`, *optional*, defaults to `0.3`):
    The entropy floor delta >= 0 in nats; rows at or below it are untouched (the released
    scripts' EM-INF delta; the paper: 0.1 < delta < 0.5).
tau_min (`float`, *optional*, defaults to `0.01`):
    Lower end of the bisection interval, 0 < tau_min < tau_max (released scripts).
tau_max (`float`, *optional*, defaults to `1.0`):
    Upper end of the bisection interval (released scripts).
max_iter (`int`, *optional*, defaults to `100`):
    Maximum bisection steps, >= 1 (released scripts).
tol (`float`, *optional*, defaults to `0.1`):
    Tolerance on |H - H_target| in nats, > 0 (released scripts)."""


def document_parameters(obj, parameters: str):
    """Put ``parameters`` (entries of a ``Parameters:`` block, unindented) in place of the line
    ``{parameters}`` of ``obj.__doc__``, at that line's indentation; returns ``obj``."""
    match = re.search(r"^( *)\{parameters\}$", obj.__doc__, flags=re.MULTILINE)
    entries = textwrap.indent(parameters, match.group(1))
    obj.__doc__ = obj.__doc__[: match.start()] + entries + obj.__doc__[match.end() :]
    return obj


def _checked_scores(scores: torch.Tensor, owner: str) -> torch.Tensor:
    """``scores`` after the checks every backend shares: a floating [rows, vocab] tensor without
    NaN or +inf (-inf marks masked tokens)."""
    check_scores(scores, owner)
    check_finite_scores(scores, owner)
    return scores


@torch.no_grad()
def em_inf(
    scores: torch.Tensor, *, threshold=0.3, n_steps=3, lr=0.1, kl_weight=0.001, optimizer="adam"
) -> torch.Tensor:
    """EM-INF: per row, a few gradient steps that lower the entropy of the next-token logits.

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (arXiv 2505.15134),
    section 4: the logits are optimized on ``H(softmax(z)) + kl_weight * KL(p_orig || softmax(z))``
    with the closed-form gradient ``-p (log p + H) + kl_weight (p - p_orig)``; a row stops for good
    as soon as its entropy is at or below ``threshold`` (checked before every step). Rows are
    independent: a row of a batch gives the same result as the same row alone. Runs under
    ``torch.no_grad()``; the input is never modified.

    Parameters:
        scores (`torch.Tensor` of shape `(rows, vocab)`):
            Next-token logits, float32, bfloat16, float16 or float64; `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        {parameters}

    Returns:
        `torch.Tensor`: new scores of the input's shape, dtype and device (computed in float32,
        float64 for float64 input); `-inf` entries stay `-inf`, rows at or below the threshold are
        returned bit for bit (possibly the input tensor itself when no row is above it).

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import em_inf, token_entropy
    >>> scores = torch.tensor([[2.0, 1.0, 0.5, 0.0], [9.0, 0.0, 0.0, float("-inf")]])
    >>> token_entropy(scores).round(decimals=3)
    tensor([1.1100, 0.0020])
    >>> out = em_inf(scores, threshold=0.3, n_steps=3, lr=0.1)
    >>> token_entropy(out).round(decimals=3)  # row 0 sharpened, row 1 already below 0.3
    tensor([0.8880, 0.0020])
    >>> torch.equal(out[1], scores[1]), out.argmax(-1).tolist()
    (True, [0, 0])

    ```
    """
    threshold, n_steps, lr, kl_weight, optimizer = check_em_inf_arguments(
        threshold, n_steps, lr, kl_weight, optimizer
    )
    scores = _checked_scores(scores, "em_inf")
    if optimizer == "adam" and lr / (1 - _ADAM_BETAS[0]) > torch.finfo(torch.float32).max:
        _raise_overflow(scores.dtype, lr)  # the first Adam step size, lr / (1 - beta1), is not a float32
    if use_kernels(scores):
        beta1, beta2 = _ADAM_BETAS
        adam = optimizer == "adam"
        out = torch.ops.em_hf.em_inf(scores, threshold, n_steps, lr, kl_weight, adam, beta1, beta2, _ADAM_EPS)
    else:
        out = _em_inf_torch(scores, threshold, n_steps, lr, kl_weight, optimizer == "adam")
    _raise_if_overflowed(out, scores, lr)
    return out


def _raise_if_overflowed(out: torch.Tensor, scores: torch.Tensor, lr: float) -> None:
    """EM-INF's steps move a logit by about ``lr`` each: a huge ``lr`` overflows float32 (or the
    output dtype) and would return +inf or NaN, or turn a finite logit into -inf."""
    if out is scores:
        return
    if not torch.equal(torch.isfinite(out), torch.isfinite(scores)):
        _raise_overflow(scores.dtype, lr)


def _raise_overflow(dtype: torch.dtype, lr: float) -> None:
    raise ValueError(
        f"em_inf: the optimized logits overflow {dtype} (`lr`={lr!r}; each step moves a logit by about "
        "`lr`); use a smaller `lr` (the paper's scripts use 0.1)."
    )


document_parameters(em_inf, EM_INF_PARAMETERS)


def _em_inf_torch(scores, threshold: float, n_steps: int, lr: float, kl_weight: float, adam: bool):
    """EM-INF in PyTorch: any device, float64 included (the reference for the kernels)."""
    z = scores.to(accumulation_dtype(scores.dtype))
    initial = softmax_entropy(z)
    rows = torch.nonzero(initial.entropy > threshold).squeeze(-1)
    if rows.numel() == 0:
        return scores

    z = z[rows].clone()
    p_orig = initial.probs[rows]
    exp_avg = torch.zeros_like(z)
    exp_avg_sq = torch.zeros_like(z)
    finished_rows, finished_z = [], []

    for step in range(1, n_steps + 1):
        stats = softmax_entropy(z) if step > 1 else _select(initial, rows)
        keep = stats.entropy > threshold
        if not bool(keep.all()):
            finished_rows.append(rows[~keep])
            finished_z.append(z[~keep])
            rows, z, p_orig = rows[keep], z[keep], p_orig[keep]
            exp_avg, exp_avg_sq = exp_avg[keep], exp_avg_sq[keep]
            stats = _select(stats, keep)
            if rows.numel() == 0:
                break
        grad = -stats.probs * (stats.log_probs + stats.entropy.unsqueeze(-1))
        if kl_weight:
            grad += kl_weight * (stats.probs - p_orig)
        if adam:
            _adam_step(z, grad, exp_avg, exp_avg_sq, step, lr)
        else:
            z.sub_(lr * grad)
        if not bool(torch.isfinite(z.amax(dim=-1)).all()):
            break  # an overflow: the caller raises (the next entropy would be undefined)

    finished_rows.append(rows)
    finished_z.append(z)
    out = scores.clone()
    out[torch.cat(finished_rows)] = torch.cat(finished_z).to(scores.dtype)
    return out


def _select(stats: SoftmaxEntropy, index: torch.Tensor) -> SoftmaxEntropy:
    return SoftmaxEntropy(*(t[index] for t in stats))


def _adam_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float) -> None:
    """One torch.optim.Adam update (same operation order as torch's single-tensor implementation)."""
    beta1, beta2 = _ADAM_BETAS
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(_ADAM_EPS)
    # Masked entries (-inf) have grad 0, hence exp_avg 0: the update is 0 and they stay -inf.
    param.addcdiv_(exp_avg, denom, value=-step_size)


@torch.no_grad()
def adaptive_temperature(
    scores: torch.Tensor,
    *,
    alpha=0.85,
    threshold=0.3,
    tau_min=0.01,
    tau_max=1.0,
    max_iter=100,
    tol=0.1,
    return_tau=False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Adaptive temperature: per row, divide the logits by the tau that brings the entropy to a target.

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (arXiv 2505.15134),
    Appendix B, Algorithm 1 (the baseline of EM-INF in section 4): for a row with initial entropy
    H0 > ``threshold``, tau is bisected in [``tau_min``, ``tau_max``] until
    ``|H(softmax(z / tau)) - max(threshold, alpha * H0)| < tol`` or ``max_iter`` steps (then the last
    midpoint is used); other rows keep tau = 1. Dividing by tau > 0 never reorders the logits. Rows
    are independent; runs under ``torch.no_grad()``; the input is never modified.

    Parameters:
        scores (`torch.Tensor` of shape `(rows, vocab)`):
            Next-token logits, float32, bfloat16, float16 or float64; `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        {parameters}
        return_tau (`bool`, *optional*, defaults to `False`):
            Also return the per-row temperatures.

    Returns:
        `torch.Tensor`: the scores divided row by row by tau, of the input's shape, dtype and device
        (rows at or below the threshold are returned bit for bit, possibly the input tensor itself when no
        row is above it); with ``return_tau``, the pair
        ``(scores, tau)`` where tau is float64 of shape `(rows,)` and 1.0 for untouched rows.

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import adaptive_temperature, token_entropy
    >>> scores = torch.tensor([[1.0, 0.5, 0.0, -0.5], [9.0, 0.0, 0.0, 0.0]])
    >>> out, tau = adaptive_temperature(scores, alpha=0.5, tol=0.01, return_tau=True)
    >>> tau.round(decimals=3)
    tensor([0.3120, 1.0000], dtype=torch.float64)
    >>> token_entropy(scores).round(decimals=3), token_entropy(out).round(decimals=3)  # target 0.5 * H0
    (tensor([1.2450, 0.0040]), tensor([0.6160, 0.0040]))

    ```
    """
    alpha, threshold, tau_min, tau_max, max_iter, tol = check_adaptive_temperature_arguments(
        alpha, threshold, tau_min, tau_max, max_iter, tol
    )
    scores = _checked_scores(scores, "adaptive_temperature")
    if use_kernels(scores):
        tau = torch.ops.em_hf.adaptive_temperature(scores, alpha, threshold, tau_min, tau_max, max_iter, tol)
    else:
        tau = _temperatures_torch(scores, alpha, threshold, tau_min, tau_max, max_iter, tol)
    out = _divide_rows(scores, tau)
    return (out, tau) if return_tau else out


document_parameters(adaptive_temperature, ADAPTIVE_TEMPERATURE_PARAMETERS)


def _temperatures_torch(scores, alpha, threshold, tau_min, tau_max, max_iter: int, tol) -> torch.Tensor:
    """The per-row bisection in PyTorch, vectorized over the rows still searching; float64 tau."""
    z = scores.to(accumulation_dtype(scores.dtype))
    initial_entropy = softmax_entropy(z).entropy.double()
    tau = torch.ones_like(initial_entropy)
    rows = torch.nonzero(initial_entropy > threshold).squeeze(-1)
    target = initial_entropy[rows].mul(alpha).clamp_min(threshold)
    low = torch.full_like(target, tau_min)
    high = torch.full_like(target, tau_max)

    for _ in range(max_iter):
        if rows.numel() == 0:
            break
        mid = (low + high) / 2
        tau[rows] = mid
        entropy = softmax_entropy(z[rows], mid.to(z.dtype).unsqueeze(-1)).entropy.double()
        searching = (entropy - target).abs() >= tol
        too_sharp = entropy < target
        low = torch.where(too_sharp, mid, low)
        high = torch.where(too_sharp, high, mid)
        rows, target, low, high = rows[searching], target[searching], low[searching], high[searching]
    return tau


def _divide_rows(scores: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """m + (z - m) / tau row by row (m the row's maximum) in the accumulation dtype; rows with
    tau == 1 are not touched. softmax of the result is softmax(z / tau) (a shift changes nothing),
    the top logit stays where it was and nothing overflows: an entry pushed below the dtype's
    lowest finite value is clamped to it (its probability is 0 either way), -inf stays -inf."""
    changed = tau != 1.0
    if not bool(changed.any()):
        return scores
    out = scores.clone()
    work_dtype = accumulation_dtype(scores.dtype)
    rows = scores[changed].to(work_dtype)
    row_max = rows.amax(dim=-1, keepdim=True)
    scaled = row_max + (rows - row_max) / tau[changed].to(work_dtype).unsqueeze(-1)
    lowest = torch.finfo(scores.dtype).min
    scaled = torch.where(rows == -math.inf, rows, scaled.clamp_min(lowest))
    out[changed] = scaled.to(scores.dtype)
    return out
