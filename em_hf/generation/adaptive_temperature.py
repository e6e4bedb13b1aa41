"""Adaptive temperature scaling: the EM-INF baseline of paper 1 (section 4, Appendix B, Algorithm 1).

Per row with initial entropy H0 = H(softmax(z)) above the threshold delta, bisect the temperature tau
in [tau_min, tau_max] until |H(softmax(z / tau)) - H_target| < tol with

    H_target = max(delta, alpha * H0),

or until ``max_iter`` bisection steps are done (then the last midpoint is used), and return z / tau.
Rows with H0 <= delta are returned unchanged. Dividing by a positive tau never reorders the logits:
unlike EM-INF logit optimization, temperature scaling only sharpens (Proposition 1).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from em_hf.ops._extension import use_kernels
from em_hf.ops.entropy import accumulation_dtype, softmax_entropy
from em_hf.utils.validation import check_finite_scores, check_number, check_positive_int, check_scores

__all__ = ["AdaptiveTemperatureLogitsWarper"]


class AdaptiveTemperatureLogitsWarper(LogitsProcessor):
    """Per-row adaptive temperature (Algorithm 1 of paper 1), vectorized over the batch.

    Pass it in ``logits_processor=[...]`` of ``generate``; like every user processor it runs before
    ``generate``'s own temperature/top-k/top-p warpers.

    Args (defaults and their source):
        alpha: target ratio of entropies, in (0, 1]. Default 0.85, the released scripts' value;
            the paper text reports alpha in (0.4, 0.6) as best.
        threshold: delta >= 0, the entropy floor (nats); rows at or below it are untouched. Default
            0.3, the released scripts' EM-INF delta (the paper: 0.1 < delta < 0.5).
        tau_min, tau_max: the bisection interval, 0 < tau_min < tau_max (scripts: 0.01, 1.0).
        max_iter: maximum bisection steps, >= 1 (scripts: 100).
        tol: tolerance on |H - H_target| in nats, > 0 (scripts: 0.1).
    """

    def __init__(
        self,
        alpha: float = 0.85,
        threshold: float = 0.3,
        tau_min: float = 0.01,
        tau_max: float = 1.0,
        max_iter: int = 100,
        tol: float = 0.1,
    ) -> None:
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.tau_min = check_number("tau_min", tau_min, low=0.0, low_open=True)
        self.tau_max = check_number("tau_max", tau_max, low=0.0, low_open=True)
        if self.tau_min >= self.tau_max:
            raise ValueError(f"`tau_min` ({tau_min}) must be smaller than `tau_max` ({tau_max}).")
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.tol = check_number("tol", tol, low=0.0, low_open=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, threshold={self.threshold}, tau_min={self.tau_min}, "
            f"tau_max={self.tau_max}, max_iter={self.max_iter}, tol={self.tol})"
        )

    @torch.no_grad()
    def temperatures(self, scores: torch.Tensor) -> torch.Tensor:
        """The per-row temperature tau (float64, shape [batch]); 1.0 for rows left untouched."""
        check_scores(scores, type(self).__name__)
        if use_kernels(scores):
            check_finite_scores(scores, type(self).__name__)
            return torch.ops.em_hf.adaptive_temperature(
                scores, self.alpha, self.threshold, self.tau_min, self.tau_max, self.max_iter, self.tol
            )
        z = scores.to(accumulation_dtype(scores.dtype))
        initial_entropy = softmax_entropy(z).entropy.double()
        tau = torch.ones_like(initial_entropy)
        rows = torch.nonzero(initial_entropy > self.threshold).squeeze(-1)
        target = initial_entropy[rows].mul(self.alpha).clamp_min(self.threshold)
        low = torch.full_like(target, self.tau_min)
        high = torch.full_like(target, self.tau_max)

        for _ in range(self.max_iter):
            if rows.numel() == 0:
                break
            mid = (low + high) / 2
            tau[rows] = mid
            entropy = softmax_entropy(z[rows], mid.to(z.dtype).unsqueeze(-1)).entropy.double()
            searching = (entropy - target).abs() >= self.tol
            too_sharp = entropy < target
            low = torch.where(too_sharp, mid, low)
            high = torch.where(too_sharp, high, mid)
            rows, target, low, high = rows[searching], target[searching], low[searching], high[searching]
        return tau

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tau = self.temperatures(scores)
        changed = tau != 1.0
        if not bool(changed.any()):
            return scores
        out = scores.clone()
        work_dtype = accumulation_dtype(scores.dtype)
        scaled = scores[changed].to(work_dtype) / tau[changed].to(work_dtype).unsqueeze(-1)
        out[changed] = scaled.to(scores.dtype)
        return out
