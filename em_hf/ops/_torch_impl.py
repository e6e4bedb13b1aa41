"""Chunked pure-PyTorch implementation of the entropy forward/backward pair (the fallback backend).

Same contract as the compiled kernels (``em_hf/ops/csrc``): for 2-D logits z [R, V] and
temperature T, with z' = z / T, m = max z', S = sum exp(z' - m):

    forward:  H = log S - sum exp(z' - m)(z' - m) / S   (clamped at 0),  lse = m + log S
    backward: dH/dz = -(1/T) p (log p + H) * grad_H,   log p = z' - lse

A row that is entirely -inf has H = 0, lse = -inf and gradient 0. Rows are processed in chunks so
that no temporary is larger than about ``_CHUNK_ELEMENTS`` floats.
"""

from __future__ import annotations

import torch

_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per temporary


def _row_chunks(rows: int, vocab: int) -> tuple[range, int]:
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    return range(0, rows, step), step


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is accumulated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def entropy_forward_torch(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows, vocab = logits.shape
    acc = accumulation_dtype(logits.dtype)
    entropy = torch.empty(rows, dtype=acc, device=logits.device)
    lse = torch.empty(rows, dtype=acc, device=logits.device)
    starts, step = _row_chunks(rows, vocab)
    for start in starts:
        z = logits[start : start + step].to(acc) / temperature
        row_max = z.amax(dim=-1, keepdim=True)
        has_mass = row_max != float("-inf")  # NaN/+inf rows go through and surface as NaN
        shifted = z - torch.where(has_mass, row_max, torch.zeros_like(row_max))
        weights = torch.exp(shifted)
        total = weights.sum(dim=-1)
        # where() instead of a product: -inf * 0 would be NaN.
        weighted = torch.where(weights > 0, weights * shifted, torch.zeros_like(shifted)).sum(dim=-1)
        chunk_entropy = (torch.log(total) - weighted / total).clamp_min(0.0)
        mass = has_mass.squeeze(-1)
        entropy[start : start + step] = torch.where(mass, chunk_entropy, torch.zeros_like(chunk_entropy))
        lse[start : start + step] = torch.where(
            mass, row_max.squeeze(-1) + torch.log(total), torch.full_like(total, float("-inf"))
        )
    return entropy, lse


def entropy_backward_torch(grad_entropy, logits, entropy, lse, temperature: float) -> torch.Tensor:
    """dH/dz * grad_H (the backward of the module docstring) for tensors as in the kernels."""
    rows, vocab = logits.shape
    acc = accumulation_dtype(logits.dtype)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    starts, step = _row_chunks(rows, vocab)
    for start in starts:
        end = start + step
        log_p = logits[start:end].to(acc) / temperature - lse[start:end, None].to(acc)
        p = torch.exp(log_p)
        scale = (grad_entropy[start:end, None].to(acc) / -temperature) * p
        chunk = torch.where(p > 0, scale * (log_p + entropy[start:end, None].to(acc)), torch.zeros_like(p))
        grad[start:end] = chunk.to(grad.dtype)
    return grad
