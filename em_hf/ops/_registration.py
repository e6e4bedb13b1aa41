"""Python-side registrations of the compiled ops (after the library is loaded): autograd for
``em_hf::entropy_forward`` (and a refusal for the second derivative) and fake (meta)
implementations of all four ops, so that the ops work under autograd when called directly and can
be traced by ``torch.compile``."""

from __future__ import annotations

import torch

from em_hf.ops._torch_impl import (
    GRAD_COLUMNS,
    STAT_COLUMNS,
    STAT_ENTROPY,
    STAT_LABEL_LOGPROB,
    STAT_SELF_CERTAINTY,
)

__all__ = ["register_python_parts"]

DOUBLE_BACKWARD_MESSAGE = (
    "em_hf's entropy ops are differentiable once (closed-form backward): a second derivative "
    "(create_graph=True, torch.autograd.grad of a gradient) is not implemented; compute it with "
    "plain PyTorch ops on `torch.log_softmax` instead."
)


def _entropy_forward_fake(logits, temperature, labels, self_certainty) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], STAT_COLUMNS, dtype=torch.float32)


def _like_logits_fake(logits: torch.Tensor, *args) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _entropy_backward_fake(grads, logits, stats, temperature, labels) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _adaptive_temperature_fake(logits: torch.Tensor, *args) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], dtype=torch.float64)


def _setup_context(ctx, inputs, output) -> None:
    logits, temperature, labels, _ = inputs
    ctx.save_for_backward(logits, output, labels)
    ctx.temperature = temperature


def _entropy_forward_backward(ctx, grad_stats: torch.Tensor):
    """dL/dz by the fused kernel from the gradients of the differentiable columns (entropy,
    self-certainty, label log-prob); the other columns (max, log-sum, count) are bookkeeping for the
    backward and get no gradient."""
    logits, stats, labels = ctx.saved_tensors
    columns = [STAT_ENTROPY, STAT_SELF_CERTAINTY, STAT_LABEL_LOGPROB]
    grads = grad_stats[:, columns].float().contiguous()
    assert grads.shape[1] == GRAD_COLUMNS
    grad = torch.ops.em_hf.entropy_backward(grads, logits, stats, ctx.temperature, labels)
    return grad, None, None, None


def _refuse_double_backward(ctx, grad_output):
    raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def _setup_nothing(ctx, inputs, output) -> None:
    pass


def register_python_parts() -> None:
    """Register autograd and fake implementations; call once, after the library is loaded."""
    torch.library.register_fake("em_hf::entropy_forward", _entropy_forward_fake)
    torch.library.register_fake("em_hf::entropy_backward", _entropy_backward_fake)
    torch.library.register_fake("em_hf::em_inf", _like_logits_fake)
    torch.library.register_fake("em_hf::adaptive_temperature", _adaptive_temperature_fake)
    torch.library.register_autograd(
        "em_hf::entropy_forward", _entropy_forward_backward, setup_context=_setup_context
    )
    torch.library.register_autograd(
        "em_hf::entropy_backward", _refuse_double_backward, setup_context=_setup_nothing
    )
