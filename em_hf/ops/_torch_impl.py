"""Chunked pure-PyTorch implementation of the entropy forward/backward pair (the fallback backend).

Same contract as the compiled kernels (``em_hf/ops/csrc``, layout in ``csrc/stats_layout.h``): for
2-D logits z [R, V] and temperature T, with m = max z, d = (z - m) / T, S = sum exp(d):

    forward:  one row of statistics per logits row (the ``STAT_*`` columns):
              H = log S - sum exp(d) d / S (clamped at 0),  m,  log S,
              self-certainty KL(U || p) = log S - mean(d) - log n over the n unmasked entries
              (when requested), log p[y] = d_y - log S (when labels are given), n
    backward: dL/dz for L = gH H + gSC SC + gLP log p[y]:
              (1/T) [-gH p (log p + H) + gSC (p - 1[z finite] / n) + gLP (1[v = y] - p)],
              log p = (z - m) / T - log S

The maximum is subtracted before dividing by T, so tiny temperatures and huge logits keep their
precision. A row that is entirely -inf has H = 0, m = log S = -inf, self-certainty 0, label
log-prob -inf and gradient 0. Rows are processed in chunks so that no temporary is larger than
about ``_CHUNK_ELEMENTS`` floats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per temporary

# Columns of the statistics (csrc/stats_layout.h).
STAT_ENTROPY, STAT_MAX, STAT_LOG_SUM, STAT_SELF_CERTAINTY, STAT_LABEL_LOGPROB, STAT_COUNT = range(6)
STAT_COLUMNS = 6
GRAD_COLUMNS = 3  # gradients of (H, self-certainty, label log-prob)
IGNORE_INDEX = -100


def _row_chunks(rows: int, vocab: int) -> tuple[range, int]:
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    return range(0, rows, step), step


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is accumulated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_of(stats: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(z / T) per row from the statistics: m / T + log S (-inf for a row without mass)."""
    row_max, log_sum = stats[:, STAT_MAX], stats[:, STAT_LOG_SUM]
    return torch.where(torch.isfinite(row_max), row_max / temperature + log_sum, row_max)


def _label_columns(
    labels: torch.Tensor | None, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(valid, safe index) of a chunk's labels, or None without labels."""
    if labels is None:
        return None
    chunk = labels[start:end]
    valid = chunk != IGNORE_INDEX
    return valid, torch.where(valid, chunk, torch.zeros_like(chunk))


def shifted_exponentials(
    z: torch.Tensor, temperature: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``z``: the maximum m, whether the row has mass (m != -inf), d = (z - m) / T (m taken
    as 0 for a row without mass), exp(d) and S = sum exp(d) (``keepdim``). Only an all -inf row is
    massless: NaN/+inf rows go through and surface as NaN for the caller to catch."""
    row_max = z.amax(dim=-1, keepdim=True)
    has_mass = row_max != -math.inf
    shifted = (z - torch.where(has_mass, row_max, torch.zeros_like(row_max))) / temperature
    weights = torch.exp(shifted)
    return row_max, has_mass, shifted, weights, weights.sum(dim=-1, keepdim=True)


# The two functions below take the arguments of the kernels' schemas (csrc/schemas.cpp), in order.
def entropy_forward_torch(
    logits: torch.Tensor, temperature: float, labels: torch.Tensor | None = None, self_certainty: bool = False
) -> torch.Tensor:
    """The [rows, 6] statistics of the module docstring, in the accumulation dtype."""
    rows, vocab = logits.shape
    acc = accumulation_dtype(logits.dtype)
    out = torch.zeros(rows, STAT_COLUMNS, dtype=acc, device=logits.device)
    starts, step = _row_chunks(rows, vocab)
    for start in starts:
        end = min(start + step, rows)
        z = logits[start:end].to(acc)
        row_max, has_mass, shifted, weights, total = shifted_exponentials(z, temperature)
        total = total.squeeze(-1)
        # where() instead of a product: -inf * 0 would be NaN.
        weighted = torch.where(weights > 0, weights * shifted, torch.zeros_like(shifted)).sum(dim=-1)
        mass = has_mass.squeeze(-1)
        log_sum = torch.where(mass, torch.log(total), torch.full_like(total, -math.inf))
        chunk = out[start:end]
        chunk[:, STAT_ENTROPY] = torch.where(mass, (log_sum - weighted / total).clamp_min(0.0), 0.0)
        chunk[:, STAT_MAX] = row_max.squeeze(-1)
        chunk[:, STAT_LOG_SUM] = log_sum
        if self_certainty:
            finite = z != -math.inf
            count = finite.sum(dim=-1).to(acc)
            mean = torch.where(finite, shifted, torch.zeros_like(shifted)).sum(dim=-1) / count.clamp_min(1)
            value = (log_sum - mean - torch.log(count.clamp_min(1))).clamp_min(0.0)
            chunk[:, STAT_SELF_CERTAINTY] = torch.where(mass & (count > 0), value, 0.0)
            chunk[:, STAT_COUNT] = count
        label_parts = _label_columns(labels, start, end)
        if label_parts is not None:
            valid, safe = label_parts
            picked = shifted.gather(1, safe[:, None]).squeeze(1) - log_sum
            picked = torch.where(mass, picked, torch.full_like(picked, -math.inf))
            chunk[:, STAT_LABEL_LOGPROB] = torch.where(valid, picked, 0.0)
        del z, shifted, weights
    return out


def entropy_backward_torch(
    grads: Tensor, logits: Tensor, stats: Tensor, temperature: float, labels: Tensor | None = None
) -> Tensor:
    """dL/dz (the backward of the module docstring) for tensors as in the kernels, in the logits' dtype."""
    rows, vocab = logits.shape
    acc = accumulation_dtype(logits.dtype)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    starts, step = _row_chunks(rows, vocab)
    for start in starts:
        end = min(start + step, rows)
        z = logits[start:end].to(acc)
        chunk_stats = stats[start:end].to(acc)
        g = grads[start:end].to(acc)
        row_max, log_sum = (
            chunk_stats[:, STAT_MAX : STAT_MAX + 1],
            chunk_stats[:, STAT_LOG_SUM : STAT_LOG_SUM + 1],
        )
        has_mass = torch.isfinite(row_max)
        log_p = (z - torch.where(has_mass, row_max, torch.zeros_like(row_max))) / temperature - torch.where(
            has_mass, log_sum, torch.zeros_like(log_sum)
        )
        p = torch.where(has_mass, torch.exp(log_p), torch.zeros_like(log_p))
        grad_h, grad_sc, grad_lp = g[:, 0:1], g[:, 1:2], g[:, 2:3]
        label_parts = _label_columns(labels, start, end)
        if label_parts is None:
            grad_lp = torch.zeros_like(grad_lp)
        else:  # no label (-100): no log-prob, no gradient
            grad_lp = torch.where(label_parts[0][:, None], grad_lp, torch.zeros_like(grad_lp))
        entropy = chunk_stats[:, STAT_ENTROPY : STAT_ENTROPY + 1]
        count = chunk_stats[:, STAT_COUNT : STAT_COUNT + 1]
        chunk = torch.where(p > 0, -grad_h * p * (log_p + entropy), torch.zeros_like(p))
        chunk = chunk + (grad_sc - grad_lp) * p
        uniform = torch.where(count > 0, grad_sc / count.clamp_min(1), torch.zeros_like(count))
        chunk = chunk - torch.where((z != -math.inf) & has_mass, uniform, torch.zeros_like(uniform))
        if label_parts is not None:
            valid, safe = label_parts
            picked = z.gather(1, safe[:, None])
            keep = valid[:, None] & (picked != -math.inf) & has_mass
            add = torch.where(keep, grad_lp, torch.zeros_like(grad_lp))
            chunk.scatter_add_(1, safe[:, None], add)
        grad[start:end] = (chunk / temperature).to(grad.dtype)
    return grad
