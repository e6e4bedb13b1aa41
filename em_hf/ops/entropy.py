"""Token entropy of softmax(z / T) and its closed-form gradient (plain PyTorch).

For logits z over a vocabulary V and a temperature T, with p = softmax(z / T):

    H(z)      = -sum_v p_v log p_v = log S - sum_v s_v (z_v/T - m) / S,
                where m = max_v z_v / T, s_v = exp(z_v/T - m), S = sum_v s_v
    dH/dz_v   = -(1/T) p_v (log p_v + H)

("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", eq. 2 and Appendix A,
where g_v = p_v(log p_v + H)).
Entries with z_v = -inf have p_v = 0 and contribute 0 to H and to the gradient (0 log 0 := 0). A row
whose entries are all -inf carries no mass: its entropy and gradient are defined as 0.
bfloat16 and float16 inputs are accumulated in float32; float64 stays float64.

Every other module computes entropy through this one. Each function picks its backend: the compiled
kernels of ``em_hf/ops/csrc`` (CPU, and CUDA where they were built) for float32/bfloat16/float16,
else the chunked PyTorch implementation (:func:`em_hf.ops.backend` tells which).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from em_hf.ops._extension import use_kernels
from em_hf.ops._torch_impl import accumulation_dtype, entropy_backward_torch, entropy_forward_torch
from em_hf.utils.validation import check_float_tensor, check_temperature

__all__ = ["entropy_backward", "entropy_forward", "entropy_grad", "softmax_entropy", "token_entropy"]


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


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    check_float_tensor(logits, name)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(
            f"`{name}` must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}."
        )


def softmax_entropy(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> SoftmaxEntropy:
    """p, log p (0 where p = 0) and H of softmax(logits / temperature), no autograd graph needed.

    ``temperature`` may be a tensor broadcastable to ``logits`` (e.g. ``[rows, 1]`` for one
    temperature per row). Computed in float32 (float64 for float64 input). Raises ``ValueError``
    when the logits contain NaN or +inf, the only inputs whose entropy is undefined.
    """
    z = logits.to(accumulation_dtype(logits.dtype)) / temperature
    row_max = z.amax(dim=-1, keepdim=True)
    # Only an all -inf row is massless; NaN or +inf rows go through and are caught below.
    has_mass = row_max != float("-inf")
    shifted = z - torch.where(has_mass, row_max, torch.zeros_like(row_max))
    exp_shifted = torch.exp(shifted)
    total = exp_shifted.sum(dim=-1, keepdim=True)
    positive = exp_shifted > 0
    # where() instead of multiplication: -inf * 0 would be NaN.
    log_probs = torch.where(positive, shifted - torch.log(total), torch.zeros_like(shifted))
    probs = exp_shifted / torch.where(has_mass, total, torch.ones_like(total))
    entropy = -(probs * log_probs).sum(dim=-1)
    entropy = torch.where(has_mass.squeeze(-1), entropy, torch.zeros_like(entropy)).clamp_min(0.0)
    if not bool(torch.isfinite(entropy).all()):
        raise ValueError(
            "`logits` contain NaN or +inf, for which the entropy is undefined; mask tokens with -inf "
            "(or a large negative number) instead."
        )
    return SoftmaxEntropy(probs, log_probs, entropy)


def entropy_forward(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, lse) per row of 2-D ``logits`` at ``temperature``, by the active backend (no checks, no
    autograd). H and lse are float32 (float64 for float64 input); lse = logsumexp(z / T)."""
    if use_kernels(logits):
        return torch.ops.em_hf.entropy_forward(logits, temperature)
    return entropy_forward_torch(logits, temperature)


def entropy_backward(
    grad_entropy: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """dH/dz * grad_H for 2-D ``logits`` from the forward's (H, lse), in the logits' dtype."""
    if use_kernels(logits):
        return torch.ops.em_hf.entropy_backward(grad_entropy, logits, entropy, lse, temperature)
    return entropy_backward_torch(grad_entropy, logits, entropy, lse, temperature)


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    rows = logits.reshape(-1, logits.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _raise_if_undefined(entropy: torch.Tensor) -> None:
    if not bool(torch.isfinite(entropy).all()):
        raise ValueError(
            "`logits` contain NaN or +inf, for which the entropy is undefined; mask tokens with -inf "
            "(or a large negative number) instead."
        )


def entropy_grad(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Closed-form gradient of the token entropy with respect to the logits, without autograd.

    ``dH/dz_v = -(1/T) p_v (log p_v + H)`` with ``p = softmax(z / T)`` ("The Unreasonable
    Effectiveness of Entropy Minimization in LLM Reasoning", Appendix A): the gradient that EM-INF
    follows at decoding time. No autograd is used, so it runs under ``torch.no_grad()`` (for
    example inside ``model.generate``). Entries at -inf get gradient 0.

    Parameters:
        logits (`torch.Tensor` of shape `(..., vocab)`):
            Floating logits (float32, float64, bfloat16 or float16); `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        temperature (`float`, *optional*, defaults to `1.0`):
            T > 0, the temperature inside the softmax.

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

    ```
    """
    _check_logits(logits)
    check_temperature(temperature)
    rows = _as_rows(logits.to(accumulation_dtype(logits.dtype)))
    entropy, lse = entropy_forward(rows, float(temperature))
    _raise_if_undefined(entropy)
    grad = entropy_backward(torch.ones_like(entropy), rows, entropy, lse, float(temperature))
    return grad.reshape(logits.shape)


class _TokenEntropy(torch.autograd.Function):
    """The PyTorch fallback of ``em_hf::entropy_forward`` with its autograd: the closed-form
    backward, saving the logits and two floats per row."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, temperature: float) -> torch.Tensor:
        entropy, lse = entropy_forward_torch(rows, temperature)
        ctx.save_for_backward(rows, entropy, lse)
        ctx.temperature = temperature
        return entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_entropy: torch.Tensor) -> tuple[torch.Tensor, None]:
        rows, entropy, lse = ctx.saved_tensors
        return entropy_backward_torch(grad_entropy.contiguous(), rows, entropy, lse, ctx.temperature), None


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last dimension, differentiable.

    ``H = -sum_v p_v log p_v`` with ``p = softmax(z / T)``: the token-level entropy of "The
    Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning" (eq. 2), which EM-FT
    (section 3.1), EM-RL's token reward (section 3.2) and "One-shot Entropy Minimization" minimize.
    The backward pass uses the closed form ``dH/dz = -(1/T) p (log p + H)`` and stores only the
    logits and two floats per row. The compiled kernels of ``em_hf/ops/csrc`` (CPU, and CUDA where
    they were built) do the work for float32/bfloat16/float16, one pass over the logits forward
    and one backward; otherwise a chunked PyTorch path (:func:`em_hf.ops.backend` tells which).

    Parameters:
        logits (`torch.Tensor` of shape `(..., vocab)`):
            Floating logits (float32, float64, bfloat16 or float16); `-inf` marks masked tokens.
            NaN and `+inf` raise `ValueError`.
        temperature (`float` or `torch.Tensor`, *optional*, defaults to `1.0`):
            T > 0, the temperature inside the softmax ("One-shot Entropy Minimization" uses 0.5,
            the sampling temperature); a tensor broadcastable to ``logits[..., :1]`` gives one
            temperature per row.

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
    _check_logits(logits)
    check_temperature(temperature)
    rows = _as_rows(logits)
    if use_kernels(rows):
        entropy = torch.ops.em_hf.entropy_forward(rows, float(temperature))[0]  # autograd registered
    elif logits.requires_grad and torch.is_grad_enabled():
        entropy = _TokenEntropy.apply(rows, float(temperature))
    else:
        entropy, _ = entropy_forward_torch(rows, float(temperature))
    _raise_if_undefined(entropy)
    return entropy.reshape(logits.shape[:-1])
