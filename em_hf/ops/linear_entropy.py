"""Token entropy (and label log-probabilities) straight from the LM head, without full logits.

For hidden states h [..., D], an LM head W [V, D] with optional bias b [V] and a temperature T:

    z = h @ W.T + b,    p = softmax(z / T)
    H = -sum_v p_v log p_v                                  (the token entropy)
    log p[y] = z_y / T - logsumexp(z / T)                   (when ``labels`` y are given)
    SC = logsumexp(z / T) - mean(z / T) - log V             (with ``self_certainty``: KL(U || p))

    dH/dz_v       = -(1/T) p_v (log p_v + H)
    dlog p[y]/dz_v = (1[v == y] - p_v) / T
    dSC/dz_v      = (p_v - 1/V) / T
    grad_h = grad_z @ W,   grad_W = grad_z.T @ h,   grad_b = sum over rows of grad_z

This is the loss of EM-FT ("The Unreasonable Effectiveness of Entropy Minimization in LLM
Reasoning", section 3.1) and of "One-shot Entropy Minimization": the mean entropy of
softmax(logits / T) at the generated positions, where ``[rows, V]`` logits dominate the memory of the
step (8192 tokens x 49152 vocabulary = 1.5 GiB of float32 logits, and as much again for their
gradient). Here the rows are processed ``chunk_size`` at a time: each chunk's logits are computed,
reduced to six floats per row (H, the row maximum and log-sum, the self-certainty, the label
log-prob, the count of unmasked tokens) by :func:`em_hf.ops.entropy.entropy_forward` (the compiled
kernels when available) and dropped. Only ``hidden``, ``weight``, ``bias``, ``labels`` and these
per-row statistics are saved for backward, which recomputes each chunk's logits. Peak extra memory
therefore grows with ``chunk_size x V``, not ``rows x V``, at the price of one more matmul.
"""

from __future__ import annotations

import torch

from em_hf.ops._torch_impl import (
    GRAD_COLUMNS,
    STAT_COLUMNS,
    STAT_ENTROPY,
    STAT_LABEL_LOGPROB,
    STAT_SELF_CERTAINTY,
    accumulation_dtype,
)
from em_hf.ops.entropy import TokenStatistics, entropy_backward, entropy_forward
from em_hf.utils.validation import check_float_tensor, check_int, check_labels, check_temperature

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "IGNORE_INDEX", "linear_entropy_loss", "linear_token_entropy"]

IGNORE_INDEX = -100
# Default chunk: about 3 * 2**24 logits (192 MiB of float32) per chunk of rows, 1024 rows at a
# 49,152 vocabulary: large enough that the chunked matmuls run near the speed of one big matmul
# (measured: 1.10x naive's time with linear_entropy_loss, against 1.25x with 336-row chunks).
DEFAULT_CHUNK_ELEMENTS = 3 << 24
_HALF_DTYPES = (torch.bfloat16, torch.float16)


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk such that a chunk holds about ``DEFAULT_CHUNK_ELEMENTS`` logits (a multiple of
    16 rows when that is at least 16)."""
    rows = max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
    return rows - rows % 16 if rows >= 16 else rows


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z = hidden @ weight.T (+ bias) for one chunk of rows, in the input dtype."""
    if bias is None:
        return hidden @ weight.T
    return torch.addmm(bias, hidden, weight.T)


def _raise_if_undefined(finite: bool) -> None:
    if not finite:
        raise ValueError(
            "`hidden @ weight.T + bias` contains NaN or +inf, for which the entropy is undefined; check "
            "`hidden`, `weight` and `bias` for non-finite values (mask tokens with a -inf bias instead)."
        )


def _grad_buffers(hidden, weight, bias, need_hidden: bool, need_weight: bool, need_bias: bool):
    """Zeroed gradient buffers. grad_W and grad_b sum over every chunk: they are accumulated in
    float32 (float64) so that half-precision inputs are rounded once at the end, not once per chunk."""
    acc = accumulation_dtype(hidden.dtype)
    grad_hidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_bias else None
    return grad_hidden, grad_weight, grad_bias


def _add_chunk_grads(grad_logits, hidden_chunk, weight, grad_hidden_rows, grad_weight, grad_bias) -> None:
    """grad_h = grad_z @ W (written into this chunk's rows), grad_W += grad_z.T @ h, grad_b += sum grad_z."""
    if grad_hidden_rows is not None:
        torch.mm(grad_logits.to(hidden_chunk.dtype), weight, out=grad_hidden_rows)
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.T, hidden_chunk.to(grad_weight.dtype))
    if grad_bias is not None:
        grad_bias.add_(grad_logits.sum(dim=0))


def _forward_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float,
    chunk_size: int,
    self_certainty: bool,
) -> torch.Tensor:
    """The per-row statistics ``[N, 6]`` (:func:`em_hf.ops.entropy.entropy_forward`) of 2-D
    ``hidden`` [N, D], one chunk of rows at a time."""
    rows = hidden.shape[0]
    stats = torch.empty(rows, STAT_COLUMNS, dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
    for start in range(0, rows, chunk_size):
        end = min(start + chunk_size, rows)
        logits = _chunk_logits(hidden[start:end], weight, bias)
        chunk_labels = None if labels is None else labels[start:end]
        stats[start:end] = entropy_forward(logits, temperature, chunk_labels, self_certainty)
        del logits
    _raise_if_undefined(bool(torch.isfinite(stats[:, STAT_ENTROPY]).all()))
    return stats


_OUTPUT_COLUMNS = (STAT_ENTROPY, STAT_SELF_CERTAINTY, STAT_LABEL_LOGPROB)


class _LinearTokenEntropy(torch.autograd.Function):
    """Chunked (H, self-certainty, label log-prob) of softmax((h @ W.T + b) / T); saves no [N, V]
    tensor, only the inputs and six floats per row."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, self_certainty):
        stats = _forward_rows(hidden, weight, bias, labels, temperature, chunk_size, self_certainty)
        ctx.save_for_backward(hidden, weight, bias, labels, stats)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return tuple(stats[:, column] for column in _OUTPUT_COLUMNS)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *output_grads):
        hidden, weight, bias, labels, stats = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        rows, dtype = hidden.shape[0], hidden.dtype
        acc = accumulation_dtype(dtype)
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, *ctx.needs_input_grad[:3])
        if all(g is None for g in output_grads) or rows == 0:
            return _finish(grad_hidden, grad_weight, grad_bias, weight, bias)
        grads = torch.zeros(rows, GRAD_COLUMNS, dtype=acc, device=hidden.device)
        for column, grad in enumerate(output_grads):
            if grad is not None:
                grads[:, column] = grad
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            hidden_chunk = hidden[start:end]
            # Same product as the forward; the entropy math then runs in the accumulation dtype.
            logits = _chunk_logits(hidden_chunk, weight, bias).to(acc)
            chunk_labels = None if labels is None else labels[start:end]
            grad_logits = entropy_backward(
                grads[start:end], logits, stats[start:end], temperature, chunk_labels
            )
            del logits
            grad_rows = None if grad_hidden is None else grad_hidden[start:end]
            _add_chunk_grads(grad_logits, hidden_chunk, weight, grad_rows, grad_weight, grad_bias)
        return _finish(grad_hidden, grad_weight, grad_bias, weight, bias)


def _finish(grad_hidden, grad_weight, grad_bias, weight, bias):
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _check_inputs(hidden, weight, bias, labels, temperature, chunk_size) -> None:
    check_float_tensor(hidden, "hidden")
    check_float_tensor(weight, "weight")
    if hidden.dim() < 1:
        raise ValueError("`hidden` must have shape [..., D] (at least one dimension), got a scalar.")
    if weight.dim() != 2:
        raise ValueError(
            f"`weight` must be the 2-D LM head weight [V, D] (e.g. `model.lm_head.weight`), got shape "
            f"{tuple(weight.shape)}."
        )
    if weight.shape[0] == 0:
        raise ValueError("`weight` has an empty vocabulary (shape [0, D]); the entropy needs V >= 1.")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`hidden` has last dimension {hidden.shape[-1]} but `weight` has shape {tuple(weight.shape)}; "
            f"`weight` must be [V, {hidden.shape[-1]}] (pass the LM head weight [V, D], not its transpose)."
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(
            f"`hidden` is {hidden.dtype} but `weight` is {weight.dtype}; cast one to the other's dtype, "
            f"e.g. `hidden.to(weight.dtype)`."
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"`bias` must be a torch.Tensor or None, got {type(bias).__name__}.")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"`bias` must have shape [V] = [{weight.shape[0]}] (one entry per vocabulary token), got "
                f"{tuple(bias.shape)}."
            )
        if bias.dtype != weight.dtype:
            raise TypeError(
                f"`bias` is {bias.dtype} but `weight` is {weight.dtype}; cast it with "
                f"`bias.to(weight.dtype)`."
            )
    check_temperature(temperature)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, hint=" rows per chunk (or None for the default)")
    if labels is not None:
        check_labels(
            labels,
            tuple(hidden.shape[:-1]),
            weight.shape[0],
            IGNORE_INDEX,
            "hidden.shape[:-1]",
            hint="; pass one label per row of `hidden` (shift them so that label i is the token that follows "
            "position i)",
        )


def linear_token_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
    self_certainty: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | TokenStatistics:
    """Entropy of softmax((hidden @ weight.T + bias) / T) without materializing the logits.

    With z = hidden @ weight.T + bias and p = softmax(z / T):

        H = -sum_v p_v log p_v,   label_logprobs = log p[labels] = z_y / T - logsumexp(z / T)

    the token entropy ("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning",
    eq. 2) that EM-FT (section 3.1) and "One-shot Entropy Minimization" (which uses T = 0.5 inside
    the entropy) minimize at the generated positions, and optionally the log-probabilities of the
    sampled tokens (for a KL penalty or a sequence log-likelihood), and with ``self_certainty`` the
    term KL(U || p) = logsumexp(z / T) - mean(z / T) - log n (U uniform over the n unmasked tokens;
    INTUITOR's self-certainty), all from the same pass over each chunk's logits. Equal, values and
    gradients, to :func:`em_hf.ops.token_statistics` of ``hidden @ weight.T + bias``.

    Memory: rows are processed ``chunk_size`` at a time, forward and backward (the backward recomputes
    each chunk's logits), and only the inputs plus six floats per row are saved for backward, so the
    peak extra memory grows with ``chunk_size x V`` (a few chunk-sized temporaries), not ``rows x V``.

    Parameters:
        hidden (`torch.Tensor` of shape `(..., D)`):
            Hidden states (the LM head's input), float32, float64, bfloat16 or float16.
        weight (`torch.Tensor` of shape `(V, D)`):
            The LM head weight (``model.lm_head.weight``), same dtype as ``hidden``.
        bias (`torch.Tensor` of shape `(V,)`, *optional*, defaults to `None`):
            The LM head bias, same dtype; a `-inf` entry masks its token.
        temperature (`float`, *optional*, defaults to `1.0`):
            T > 0, the temperature inside the softmax ("One-shot Entropy Minimization": 0.5).
        labels (`torch.Tensor` of shape `hidden.shape[:-1]`, *optional*, defaults to `None`):
            Integer tokens in ``[0, V)`` whose log-probabilities are returned too; ``-100`` is
            ignored (log-prob 0, no gradient).
        chunk_size (`int`, *optional*, defaults to `None`):
            Rows per chunk; ``None`` picks about ``3 * 2**24 / V`` rows (192 MiB of float32 logits
            per chunk, a multiple of 16 rows). The logits matmul runs in the input dtype; the
            statistics and the summed weight/bias gradients are accumulated in float32 (float64
            for float64).
        self_certainty (`bool`, *optional*, defaults to `False`):
            Also compute the self-certainty, and return a [`~em_hf.ops.TokenStatistics`].

    Returns:
        `torch.Tensor` of shape `hidden.shape[:-1]`: the entropies (float32 for bfloat16/float16
        inputs, otherwise the input dtype), or the pair ``(entropy, label_logprobs)`` when
        ``labels`` is given, or ``TokenStatistics(entropy, self_certainty, logprob)`` (``logprob``
        None without labels) with ``self_certainty=True``. Each output is differentiable with
        respect to ``hidden``, ``weight`` and ``bias``
        (closed-form, once differentiable).

    Raises:
        `TypeError` or `ValueError`: mismatched shapes or dtypes, T <= 0, ``chunk_size < 1`` or
        labels out of range; `ValueError` when the logits contain NaN or +inf.

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import linear_token_entropy, token_entropy
    >>> _ = torch.manual_seed(0)
    >>> hidden, weight = torch.randn(2, 5, 16), torch.randn(64, 16)
    >>> entropy, logprobs = linear_token_entropy(hidden, weight, labels=torch.zeros(2, 5, dtype=torch.long))
    >>> entropy.shape, logprobs.shape
    (torch.Size([2, 5]), torch.Size([2, 5]))
    >>> torch.allclose(entropy, token_entropy(hidden @ weight.T), atol=1e-5)
    True
    >>> stats = linear_token_entropy(hidden, weight, temperature=0.5, self_certainty=True)
    >>> bool((stats.self_certainty > 0).all()), stats.logprob is None
    (True, True)

    ```
    """
    _check_inputs(hidden, weight, bias, labels, temperature, chunk_size)
    temperature = check_temperature(temperature)
    leading = hidden.shape[:-1]
    rows = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = None if labels is None else labels.reshape(-1).to(torch.int64)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    grad_wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    args = (rows, weight, bias, flat_labels, temperature, chunk_size, self_certainty)
    if grad_wanted:
        outputs = _LinearTokenEntropy.apply(*args)
    else:
        stats = _forward_rows(*args)
        outputs = tuple(stats[:, column] for column in _OUTPUT_COLUMNS)
    entropy, certainty, logprobs = (output.reshape(leading) for output in outputs)
    if self_certainty:
        return TokenStatistics(entropy, certainty, None if labels is None else logprobs)
    if labels is None:
        return entropy
    return entropy, logprobs


class _LinearEntropyLoss(torch.autograd.Function):
    """sum_r w_r H_r with the gradients computed chunk by chunk in the forward pass (the loss is a
    scalar, so backward only scales them by grad_output): no logits are recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_weights, temperature, chunk_size):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        rows, dtype = hidden.shape[0], hidden.dtype
        acc = accumulation_dtype(dtype)
        entropies = torch.empty(rows, dtype=acc, device=hidden.device)
        grad_hidden, grad_weight, grad_bias = _grad_buffers(
            hidden, weight, bias, need_hidden, need_weight, need_bias
        )
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            hidden_chunk = hidden[start:end]
            logits = _chunk_logits(hidden_chunk, weight, bias)
            stats = entropy_forward(logits, temperature)
            entropies[start:end] = stats[:, STAT_ENTROPY]
            if not (need_hidden or need_weight or need_bias):
                continue
            grads = torch.zeros(end - start, GRAD_COLUMNS, dtype=acc, device=hidden.device)
            grads[:, 0] = token_weights[start:end]
            grad_logits = entropy_backward(grads, logits.to(acc), stats, temperature)
            del logits
            grad_rows = None if grad_hidden is None else grad_hidden[start:end]
            _add_chunk_grads(grad_logits, hidden_chunk, weight, grad_rows, grad_weight, grad_bias)
        _raise_if_undefined(bool(torch.isfinite(entropies).all()))
        total = (token_weights.to(acc) * entropies).sum()
        # dL/dw_r = H_r: the token weights get their gradient too (e.g. learned or soft masks).
        saved = [g for g in (grad_hidden, grad_weight, grad_bias) if g is not None]
        ctx.save_for_backward(*saved, entropies)
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.weights_dtype = token_weights.dtype
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        *saved, entropies = ctx.saved_tensors
        saved = iter(saved)
        grads = []
        for present, dtype in zip(ctx.present, ctx.dtypes, strict=True):
            grads.append((next(saved) * grad_output).to(dtype) if present else None)
        grad_weights = (entropies * grad_output).to(ctx.weights_dtype) if ctx.needs_input_grad[3] else None
        return (*grads, grad_weights, None, None)


def linear_entropy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_weights: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The weighted entropy loss  L = sum_r w_r H_r  from the LM head, gradients computed in forward.

    With z = hidden @ weight.T + bias, H_r the entropy of softmax(z_r / T) (see
    :func:`linear_token_entropy`) and ``token_weights`` w (e.g. completion mask / number of
    completion tokens, which gives the EM-FT loss "mean token entropy over generated positions" of
    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 3.1, and of
    "One-shot Entropy Minimization"). Because the weights are known in the forward pass, each
    chunk's gradient dL/dz = w_r dH_r/dz is formed right after its logits and turned into the
    hidden/weight/bias gradients at once; backward only scales them by the incoming scalar gradient.
    That is the same three matmuls as ``(w * token_entropy(hidden @ weight.T + b)).sum()``, with
    peak extra memory growing with ``chunk_size x V`` (plus a ``[V, D]`` float32 weight gradient)
    instead of ``rows x V``. Gradients are computed only for inputs that require them.

    Parameters:
        hidden (`torch.Tensor` of shape `(..., D)`):
            Hidden states (the LM head's input), float32, float64, bfloat16 or float16.
        weight (`torch.Tensor` of shape `(V, D)`):
            The LM head weight (``model.lm_head.weight``), same dtype as ``hidden``.
        token_weights (`torch.Tensor` of shape `hidden.shape[:-1]`):
            Finite weight w_r of each row's entropy (0 for prompt and padding positions); when it
            requires grad it gets dL/dw_r = H_r.
        bias (`torch.Tensor` of shape `(V,)`, *optional*, defaults to `None`):
            The LM head bias, same dtype; a `-inf` entry masks its token.
        temperature (`float`, *optional*, defaults to `1.0`):
            T > 0, the temperature inside the softmax ("One-shot Entropy Minimization": 0.5).
        chunk_size (`int`, *optional*, defaults to `None`):
            Rows per chunk; ``None`` picks about ``3 * 2**24 / V`` rows (see
            :func:`linear_token_entropy`).

    Returns:
        `torch.Tensor`: the 0-dim loss (float32 for bfloat16/float16 inputs).

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import linear_entropy_loss, token_entropy
    >>> _ = torch.manual_seed(0)
    >>> hidden, weight = torch.randn(2, 5, 16), torch.randn(64, 16, requires_grad=True)
    >>> mask = torch.tensor([[0.0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])  # completion positions
    >>> loss = linear_entropy_loss(hidden, weight, mask / mask.sum())
    >>> loss.backward()
    >>> naive = (token_entropy(hidden @ weight.T) * mask).sum() / mask.sum()
    >>> torch.allclose(loss, naive, atol=1e-5), weight.grad.shape
    (True, torch.Size([64, 16]))

    ```
    """
    _check_inputs(hidden, weight, bias, None, temperature, chunk_size)
    if not isinstance(token_weights, torch.Tensor) or token_weights.shape != hidden.shape[:-1]:
        raise ValueError(
            f"`token_weights` must be a tensor of shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got "
            f"{getattr(token_weights, 'shape', type(token_weights).__name__)}."
        )
    if not bool(torch.isfinite(token_weights).all()):
        raise ValueError("`token_weights` contains NaN or inf.")
    rows = hidden.reshape(-1, hidden.shape[-1])
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    flat_weights = token_weights.reshape(-1)
    temperature = check_temperature(temperature)
    inputs = (hidden, weight, bias, token_weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _LinearEntropyLoss.apply(rows, weight, bias, flat_weights, temperature, chunk_size)
    with torch.no_grad():
        return _LinearEntropyLoss.apply(rows, weight, bias, flat_weights, temperature, chunk_size)
