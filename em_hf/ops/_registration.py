"""Python-side registrations of the compiled ops (after the library is loaded): autograd for
``em_hf::entropy_forward`` and fake (meta) implementations of all four ops, so that the ops work
under autograd when called directly and can be traced by ``torch.compile``."""

from __future__ import annotations

import torch

__all__ = ["register_python_parts"]


def _entropy_forward_fake(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(rows, dtype=torch.float32)


def _like_logits_fake(logits: torch.Tensor, *args) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _entropy_backward_fake(grad_entropy, logits, entropy, lse, temperature) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _adaptive_temperature_fake(logits: torch.Tensor, *args) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], dtype=torch.float64)


def _setup_context(ctx, inputs, output) -> None:
    logits, temperature = inputs
    entropy, lse = output
    ctx.save_for_backward(logits, entropy, lse)
    ctx.temperature = temperature
    ctx.set_materialize_grads(False)  # an unused lse output then has no gradient (None), not zeros


def _entropy_forward_backward(ctx, grad_entropy: torch.Tensor, grad_lse: torch.Tensor):
    """dH/dz by the fused kernel; the lse output's gradient, d lse/dz = p / T, is added (unfused)
    only when a loss actually uses lse."""
    logits, entropy, lse = ctx.saved_tensors
    temperature = ctx.temperature
    if grad_entropy is None:
        grad_entropy = torch.zeros_like(entropy)
    grad = torch.ops.em_hf.entropy_backward(grad_entropy.contiguous(), logits, entropy, lse, temperature)
    if grad_lse is not None:
        probs = torch.exp(logits.float() / temperature - lse[:, None])
        grad = grad + (probs * (grad_lse[:, None] / temperature)).to(grad.dtype)
    return grad, None


def register_python_parts() -> None:
    """Register autograd and fake implementations; call once, after the library is loaded."""
    torch.library.register_fake("em_hf::entropy_forward", _entropy_forward_fake)
    torch.library.register_fake("em_hf::entropy_backward", _entropy_backward_fake)
    torch.library.register_fake("em_hf::em_inf", _like_logits_fake)
    torch.library.register_fake("em_hf::adaptive_temperature", _adaptive_temperature_fake)
    torch.library.register_autograd(
        "em_hf::entropy_forward", _entropy_forward_backward, setup_context=_setup_context
    )
