"""Token entropy of softmax(z / T), the per-token statistics of the same pass, and their
closed-form gradients.

For logits z over a vocabulary V and a temperature T, with p = softmax(z / T), m = max_v z_v,
d_v = (z_v - m) / T and S = sum_v exp(d_v):

    H(z)      = -sum_v p_v log p_v = log S - sum_v exp(d_v) d_v / S
    dH/dz_v   = -(1/T) p_v (log p_v + H)

("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", eq. 2 and Appendix A,
where g_v = p_v(log p_v + H)). The same pass over a row also gives, on request:

    self-certainty  SC = KL(U || p) = logsumexp(z / T) - mean_v(z_v / T) - log n,
                    dSC/dz_v = (1/T) (p_v - 1/n)
    label log-prob  log p_y = d_y - log S,   dlog p_y/dz_v = (1/T) (1[v = y] - p_v)

where U is the uniform distribution over the n unmasked entries: a token at -inf is outside the
vocabulary for "uniform" as it is for p (INTUITOR's self-certainty, "Learning to Reason without
External Rewards", arXiv:2505.19590).
Entries with z_v = -inf have p_v = 0 and contribute 0 to H and to the gradient (0 log 0 := 0). A row
whose entries are all -inf carries no mass: its entropy, self-certainty and gradient are 0 and its
label log-prob is -inf. The row maximum is subtracted before anything is divided by T, so large
logits and small temperatures lose no precision. bfloat16 and float16 inputs are accumulated in
float32; float64 stays float64.

Every other module computes entropy through this one. Each function picks its backend: the compiled
kernels of ``em_hf/ops/csrc`` (CPU, and CUDA where they were built) for float32/bfloat16/float16,
else the chunked PyTorch implementation (:func:`em_hf.ops.backend` tells which).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from em_hf.ops._extension import use_kernels
from em_hf.ops._registration import DOUBLE_BACKWARD_MESSAGE
from em_hf.ops._torch_impl import (
    GRAD_COLUMNS,
    IGNORE_INDEX,
    STAT_ENTROPY,
    STAT_LABEL_LOGPROB,
    STAT_SELF_CERTAINTY,
    accumulation_dtype,
    entropy_backward_torch,
    entropy_forward_torch,
    shifted_exponentials,
)
from em_hf.utils.validation import check_float_tensor, check_labels, check_temperature

__all__ = [
    "TokenStatistics",
    "entropy_backward",
    "entropy_forward",
    "entropy_grad",
    "softmax_entropy",
    "token_entropy",
    "token_statistics",
]

UNDEFINED_MESSAGE = (
    "`logits` contain NaN or +inf, for which the entropy is undefined; mask tokens with -inf "
    "(or a large negative number) instead."
)


class SoftmaxEntropy(NamedTuple):
    """The intermediate quantities of one entropy evaluation (:func:`softmax_entropy`), in the
    accumulation dtype.

    Parameters:
        probs (`torch.Tensor` of shape `(..., vocab)`):
            p = softmax(z / T).
        log_probs (`torch.Tensor` of shape `(..., vocab)`):
            log p, with 0 (never -inf) where p = 0.
        entropy (`torch.Tensor` of shape `(...)`):
            H = -sum_v p_v log p_v.

    Examples:
        >>> import torch
        >>> from em_hf.ops import softmax_entropy
        >>> probs, log_probs, entropy = softmax_entropy(torch.tensor([[0.0, 0.0, float("-inf")]]))
        >>> probs, log_probs, entropy.round(decimals=4)
        (tensor([[0.5000, 0.5000, 0.0000]]), tensor([[-0.6931, -0.6931,  0.0000]]), tensor([0.6931]))
    """

    probs: torch.Tensor  # p = softmax(z / T), [..., V]
    log_probs: torch.Tensor  # log p with 0 where p == 0 (never -inf), [..., V]
    entropy: torch.Tensor  # H, [...]


class TokenStatistics(NamedTuple):
    """The per-token statistics of one pass over the logits (:func:`token_statistics`).

    Parameters:
        entropy (`torch.Tensor` of shape `(...)`):
            H = -sum_v p_v log p_v of p = softmax(z / T).
        self_certainty (`torch.Tensor` of shape `(...)`):
            KL(U || p) = logsumexp(z / T) - mean(z / T) - log n, U uniform over the n unmasked
            entries (INTUITOR's self-certainty of a token; >= 0, 0 for a uniform p).
        logprob (`torch.Tensor` of shape `(...)` or `None`):
            log p[label], the sampled token's log-probability (0 where the label is -100); None
            when no labels were given.

    Examples:
        >>> import torch
        >>> from em_hf.ops import token_statistics
        >>> stats = token_statistics(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), labels=torch.tensor([2]))
        >>> stats.entropy.round(decimals=4), stats.self_certainty, stats.logprob.round(decimals=4)
        (tensor([1.3863]), tensor([0.]), tensor([-1.3863]))
    """

    entropy: torch.Tensor
    self_certainty: torch.Tensor
    logprob: torch.Tensor | None


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    check_float_tensor(logits, name)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(
            f"`{name}` must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}."
        )


def softmax_entropy(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> SoftmaxEntropy:
    """p, log p (0 where p = 0) and H of softmax(logits / temperature), no autograd graph needed.

    ``temperature`` may be a tensor broadcastable to ``logits[..., :1]`` (one temperature per row).
    Computed in float32 (float64 for float64 input), the row maximum subtracted before the division.
    Raises ``ValueError`` when the logits contain NaN or +inf, the only inputs whose entropy is
    undefined.
    """
    _check_logits(logits)
    temperature = check_temperature(temperature, per_row=tuple(logits.shape[:-1]))
    z = logits.to(accumulation_dtype(logits.dtype))
    _, has_mass, shifted, exp_shifted, total = shifted_exponentials(z, temperature)  # NaN/+inf caught below
    positive = exp_shifted > 0
    # where() instead of multiplication: -inf * 0 would be NaN.
    log_probs = torch.where(positive, shifted - torch.log(total), torch.zeros_like(shifted))
    probs = exp_shifted / torch.where(has_mass, total, torch.ones_like(total))
    entropy = -(probs * log_probs).sum(dim=-1)
    entropy = torch.where(has_mass.squeeze(-1), entropy, torch.zeros_like(entropy)).clamp_min(0.0)
    if not bool(torch.isfinite(entropy).all()):
        raise ValueError(UNDEFINED_MESSAGE)
    return SoftmaxEntropy(probs, log_probs, entropy)


def entropy_forward(
    logits: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    self_certainty: bool = False,
) -> torch.Tensor:
    """The per-row statistics ``[rows, 6]`` of 2-D ``logits`` at ``temperature`` (columns
    ``STAT_*`` of :mod:`em_hf.ops._torch_impl`: entropy, max, log-sum, self-certainty, label
    log-prob, count), by the active backend, in one pass per row; no checks, no autograd. float32
    (float64 for float64 input). ``labels``: int64 ``[rows]`` (-100: none)."""
    if use_kernels(logits):
        return torch.ops.em_hf.entropy_forward(logits, temperature, labels, self_certainty)
    return entropy_forward_torch(logits, temperature, labels, self_certainty)


def entropy_backward(
    grads: torch.Tensor,
    logits: torch.Tensor,
    stats: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """dL/dz for 2-D ``logits`` from the gradients ``[rows, 3]`` of (entropy, self-certainty,
    label log-prob) and the forward's statistics, in the logits' dtype."""
    if use_kernels(logits):
        return torch.ops.em_hf.entropy_backward(grads, logits, stats, temperature, labels)
    return entropy_backward_torch(grads, logits, stats, temperature, labels)


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    rows = logits.reshape(-1, logits.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _raise_if_undefined(entropy: torch.Tensor) -> None:
    if not bool(torch.isfinite(entropy).all()):
        raise ValueError(UNDEFINED_MESSAGE)


def entropy_grad(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Closed-form gradient of the token entropy with respect to the logits, without autograd.

    ``dH/dz_v = -(1/T) p_v (log p_v + H)`` with ``p = softmax(z / T)`` ("The Unreasonable
    Effectiveness of Entropy Minimization in LLM Reasoning", Appendix A): the gradient that EM-INF
    follows at decoding time. No autograd is used, so it runs under ``torch.no_grad()`` (for
    example inside ``model.generate``). Entries at -inf get gradient 0. ``log p`` is formed as
    ``(z - max z) / T - log S``, so large logits (ties at 1e30 included) and small temperatures
    keep full precision.

    Parameters:
        logits (`torch.Tensor` of shape `(..., vocab)`):
            Floating logits (float32, float64, bfloat16 or float16); `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        temperature (`float`, *optional*, defaults to `1.0`):
            T > 0 (at least ``em_hf.utils.validation.MIN_TEMPERATURE``), the temperature inside
            the softmax; one number for all rows.

    Returns:
        `torch.Tensor`: the gradient, same shape as ``logits``; float32 for bfloat16/float16 input
        (the accumulation dtype), else the input dtype.

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import entropy_grad
    >>> logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    >>> entropy_grad(logits).round(decimals=4)
    tensor([[-0.2826,  0.1408,  0.1418,  0.0000]])
    >>> entropy_grad(logits).sum().abs() < 1e-6  # softmax is shift-invariant: the entries sum to 0
    tensor(True)
    >>> entropy_grad(torch.tensor([[1e30, 1e30]]))  # a tie: p = (1/2, 1/2), H = log 2, gradient 0
    tensor([[0., 0.]])

    ```
    """
    _check_logits(logits)
    temperature = check_temperature(temperature)
    rows = _as_rows(logits.to(accumulation_dtype(logits.dtype)))
    stats = entropy_forward(rows, temperature)
    _raise_if_undefined(stats[:, STAT_ENTROPY])
    grads = torch.zeros(rows.shape[0], GRAD_COLUMNS, dtype=stats.dtype, device=rows.device)
    grads[:, 0] = 1.0
    grad = entropy_backward(grads, rows, stats, temperature)
    return grad.reshape(logits.shape)


class _RowStatistics(torch.autograd.Function):
    """(entropy, self-certainty, label log-prob) of 2-D logits by the active backend, with the
    closed-form backward of the fused kernel; saves the logits and six floats per row. Once
    differentiable: a second derivative raises (on every backend) with DOUBLE_BACKWARD_MESSAGE."""

    @staticmethod
    def forward(ctx, rows, labels, temperature, self_certainty):
        stats = entropy_forward(rows, temperature, labels, self_certainty)
        ctx.save_for_backward(rows, stats, labels)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return stats[:, STAT_ENTROPY], stats[:, STAT_SELF_CERTAINTY], stats[:, STAT_LABEL_LOGPROB]

    @staticmethod
    def backward(ctx, grad_entropy, grad_self_certainty, grad_logprob):
        rows, stats, labels = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()  # True under backward(create_graph=True)
        with torch.no_grad():
            grads = torch.zeros(rows.shape[0], GRAD_COLUMNS, dtype=stats.dtype, device=rows.device)
            for column, grad in enumerate((grad_entropy, grad_self_certainty, grad_logprob)):
                if grad is not None:
                    grads[:, column] = grad
            grad_rows = entropy_backward(grads, rows, stats, ctx.temperature, labels)
        if create_graph:  # the gradient itself must not be differentiated: say so when someone tries
            grad_rows = _NoSecondDerivative.apply(grad_rows, rows)
        return grad_rows, None, None, None


class _NoSecondDerivative(torch.autograd.Function):
    """Identity on a first derivative whose own backward raises: a second derivative of the
    closed-form ops would otherwise be missing (zeros, or "does not require grad") without a word."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, grad_output):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def _row_statistics(
    logits: torch.Tensor, temperature, labels: torch.Tensor | None, self_certainty: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three differentiable statistics of ``logits`` [..., V] as rows, checked; a tensor
    temperature (one per row, or one that requires grad) is applied by division first, so autograd
    reaches it."""
    _check_logits(logits)
    leading = tuple(logits.shape[:-1])
    temperature = check_temperature(temperature, per_row=leading, differentiable=True)
    if isinstance(temperature, torch.Tensor):
        z = logits.to(accumulation_dtype(logits.dtype))
        row_max = z.detach().amax(dim=-1, keepdim=True)
        shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        logits, temperature = (z - shift) / temperature, 1.0  # softmax is shift-invariant
    rows = _as_rows(logits)
    flat_labels = None if labels is None else labels.reshape(-1)
    if torch.is_grad_enabled() and rows.requires_grad:
        entropy, certainty, logprob = _RowStatistics.apply(rows, flat_labels, temperature, self_certainty)
    else:
        stats = entropy_forward(rows, temperature, flat_labels, self_certainty)
        entropy, certainty, logprob = (
            stats[:, c] for c in (STAT_ENTROPY, STAT_SELF_CERTAINTY, STAT_LABEL_LOGPROB)
        )
    _raise_if_undefined(entropy)
    return entropy.reshape(leading), certainty.reshape(leading), logprob.reshape(leading)


def token_entropy(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last dimension, differentiable.

    ``H = -sum_v p_v log p_v`` with ``p = softmax(z / T)``: the token-level entropy of "The
    Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (eq. 2), which EM-FT
    (section 3.1), EM-RL's token reward (section 3.2) and "One-shot Entropy Minimization" minimize.
    The backward pass uses the closed form ``dH/dz = -(1/T) p (log p + H)`` and stores only the
    logits and six floats per row; it is differentiable once (a second derivative raises). The
    compiled kernels of ``em_hf/ops/csrc`` (CPU, and CUDA where they were built) do the work for
    float32/bfloat16/float16, one pass over the logits forward and one backward; otherwise a
    chunked PyTorch path (:func:`em_hf.ops.backend` tells which).

    Parameters:
        logits (`torch.Tensor` of shape `(..., vocab)`):
            Floating logits (float32, float64, bfloat16 or float16); `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        temperature (`float` or `torch.Tensor`, *optional*, defaults to `1.0`):
            T > 0, the temperature inside the softmax ("One-shot Entropy Minimization" uses 0.5,
            the sampling temperature); a tensor broadcastable to ``logits[..., :1]`` gives one
            temperature per row, and gets a gradient when it requires one.

    Returns:
        `torch.Tensor` of shape `(...)`: entropies in nats, float32 for bfloat16/float16 input
        (float32 accumulation), otherwise the input dtype. Never NaN: rows that are entirely -inf
        have entropy 0.

    Examples:

    ```python
    >>> import math, torch
    >>> from em_hf.ops import token_entropy
    >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, float("-inf")]], requires_grad=True)
    >>> entropy = token_entropy(logits)
    >>> entropy.detach().round(decimals=4), round(math.log(4), 4)  # uniform over 4 tokens: log 4
    (tensor([1.3863, 0.0799]), 1.3863)
    >>> entropy.sum().backward()
    >>> logits.grad[1].round(decimals=4)
    tensor([-0.0656,  0.0328,  0.0328,  0.0000])
    >>> token_entropy(torch.zeros(2, 3, 8), temperature=0.5).shape  # leading dimensions are kept
    torch.Size([2, 3])

    ```
    """
    return _row_statistics(logits, temperature, None, False)[0]


def token_statistics(
    logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, labels: torch.Tensor | None = None
) -> TokenStatistics:
    """Entropy, self-certainty and (with ``labels``) the sampled token's log-probability of
    softmax(logits / temperature), from one pass over each row, differentiable.

    With p = softmax(z / T) and U the uniform distribution over the n unmasked entries of a row:

        entropy         H = -sum_v p_v log p_v                     (EM, RENT: minus its mean)
        self_certainty  KL(U || p) = logsumexp(z / T) - mean(z / T) - log n
                        (INTUITOR, "Learning to Reason without External Rewards", arXiv:2505.19590)
        logprob         log p[y] = z_y / T - logsumexp(z / T)

    All three come from the same pass as :func:`token_entropy` (the compiled kernels when
    available): float32 accumulation, no ``[rows, vocab]`` temporary, the row maximum subtracted
    first. The backward is the fused closed form
    ``(1/T)[-gH p (log p + H) + gSC (p - 1/n) + gLP (onehot(y) - p)]``.

    Parameters:
        logits (`torch.Tensor` of shape `(..., vocab)`):
            Floating logits; `-inf` marks masked tokens (outside "uniform" too). NaN and `+inf`
            raise `ValueError`.
        temperature (`float` or `torch.Tensor`, *optional*, defaults to `1.0`):
            T > 0, as in :func:`token_entropy`.
        labels (`torch.Tensor` of shape `logits.shape[:-1]`, *optional*, defaults to `None`):
            Integer tokens in ``[0, vocab)`` whose log-probabilities are returned; ``-100`` gives
            0 (ignored). A masked label (its logit is -inf) has log-probability -inf.

    Returns:
        [`TokenStatistics`]: ``(entropy, self_certainty, logprob)``, each of shape
        ``logits.shape[:-1]`` (``logprob`` is None without labels); float32 for
        bfloat16/float16 input, otherwise the input dtype.

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import token_statistics
    >>> logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]], requires_grad=True)
    >>> stats = token_statistics(logits, labels=torch.tensor([0]))
    >>> [round(v.item(), 4) for v in stats]  # H, KL(uniform over 3 || p) = 2.4076 - 1 - log 3, log p[0]
    [0.8324, 0.309, -0.4076]
    >>> (stats.self_certainty + stats.logprob).sum().backward()  # (p - 1/3) + (onehot - p)
    >>> logits.grad.round(decimals=4)
    tensor([[ 0.6667, -0.3333, -0.3333,  0.0000]])

    ```
    """
    _check_logits(logits)
    if labels is not None:
        check_labels(labels, tuple(logits.shape[:-1]), logits.shape[-1], IGNORE_INDEX, "logits.shape[:-1]")
        labels = labels.to(device=logits.device, dtype=torch.int64)
    entropy, certainty, logprob = _row_statistics(logits, temperature, labels, True)
    return TokenStatistics(entropy, certainty, logprob if labels is not None else None)
