"""EM-INF: entropy minimization of the next-token logits at every decoding step.

Paper 1 ("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning"), section 4,
eq. 5: the logits z of one decoding step are treated as free parameters and a few gradient steps
are taken on

    L(z) = H(softmax(z)) + kl_weight * KL(p_orig || softmax(z)),

stopping for a row as soon as its entropy is at or below the threshold delta. The model is never
differentiated: the gradient is in closed form,

    dL/dz_v = -p_v (log p_v + H) + kl_weight * (p_v - p_orig_v),

(the KL gradient uses sum_v p_orig_v = 1), so the processor runs under ``torch.no_grad()`` inside
``model.generate``. On CPU (float32/bf16/fp16) the whole loop runs in one fused C++ call
(``em_hf/ops/csrc/em_inf_cpu.cpp``: one pass over a row per step); elsewhere in PyTorch.
Defaults follow the released scripts (3 Adam steps, lr 0.1, delta 0.3, kl_weight 0.001); the
paper text uses 5-15 steps and 0.1 < delta < 0.5.

Unlike the released reference code (one entropy summed over the whole batch, one stop for all rows),
each row has its own entropy, its own stop and its own Adam moments, so a row of a batch gives the
same result as the same row alone.
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor

from em_hf.ops._extension import use_kernels
from em_hf.ops.entropy import accumulation_dtype, softmax_entropy
from em_hf.utils.validation import check_finite_scores, check_number, check_positive_int, check_scores

__all__ = ["EntropyMinLogitsProcessor"]

# torch.optim.Adam's defaults, so that batch size 1 reproduces the reference procedure.
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class EntropyMinLogitsProcessor(LogitsProcessor):
    """Per-row EM-INF logit optimization, to be passed in ``logits_processor=[...]`` of ``generate``.

    transformers applies user processors before the sampling warpers (temperature, top-k, top-p), so
    this processor sees the model's raw logits, as the paper's procedure requires; sampling with a
    low temperature (0.1 in the paper) follows. With greedy decoding it changes nothing that
    matters: a gradient step never moves another logit above the top one (Proposition 1).

    Args:
        threshold: delta >= 0. A row whose entropy (nats) is at or below it is left as it is from
            then on (checked before every step, as in the reference procedure).
        n_steps: number of gradient steps (>= 1) for a row that stays above the threshold.
        lr: step size (> 0).
        kl_weight: weight (>= 0) of KL(p_orig || p), which keeps p near the model's distribution.
        optimizer: ``"adam"`` (torch's Adam with betas (0.9, 0.999), eps 1e-8; the released
            scripts) or ``"sgd"`` (plain gradient descent; then the argmax never changes).

    Returns scores of the input's dtype and device; -inf entries stay -inf. Work is done in float32
    (float64 for float64 input).
    """

    def __init__(
        self,
        threshold: float = 0.3,
        n_steps: int = 3,
        lr: float = 0.1,
        kl_weight: float = 0.001,
        optimizer: str = "adam",
    ) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"`optimizer` must be 'adam' or 'sgd', got {optimizer!r}.")
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.n_steps = check_positive_int("n_steps", n_steps)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.kl_weight = check_number("kl_weight", kl_weight, low=0.0)
        self.optimizer = optimizer

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold}, n_steps={self.n_steps}, lr={self.lr}, "
            f"kl_weight={self.kl_weight}, optimizer={self.optimizer!r})"
        )

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, type(self).__name__)
        if use_kernels(scores):
            check_finite_scores(scores, type(self).__name__)
            beta1, beta2 = _ADAM_BETAS
            return torch.ops.em_hf.em_inf(
                scores,
                self.threshold,
                self.n_steps,
                self.lr,
                self.kl_weight,
                self.optimizer == "adam",
                beta1,
                beta2,
                _ADAM_EPS,
            )
        return self._optimize_torch(scores)

    def _optimize_torch(self, scores: torch.Tensor) -> torch.Tensor:
        """The same procedure in PyTorch: any device, float64 included (the reference for the kernel)."""
        z = scores.to(accumulation_dtype(scores.dtype))
        initial = softmax_entropy(z)
        rows = torch.nonzero(initial.entropy > self.threshold).squeeze(-1)
        if rows.numel() == 0:
            return scores

        z = z[rows].clone()
        p_orig = initial.probs[rows]
        exp_avg = torch.zeros_like(z)
        exp_avg_sq = torch.zeros_like(z)
        finished_rows, finished_z = [], []

        for step in range(1, self.n_steps + 1):
            stats = softmax_entropy(z) if step > 1 else _select(initial, rows)
            keep = stats.entropy > self.threshold
            if not bool(keep.all()):
                finished_rows.append(rows[~keep])
                finished_z.append(z[~keep])
                rows, z, p_orig = rows[keep], z[keep], p_orig[keep]
                exp_avg, exp_avg_sq = exp_avg[keep], exp_avg_sq[keep]
                stats = _select(stats, keep)
                if rows.numel() == 0:
                    break
            grad = -stats.probs * (stats.log_probs + stats.entropy.unsqueeze(-1))
            if self.kl_weight:
                grad += self.kl_weight * (stats.probs - p_orig)
            if self.optimizer == "sgd":
                z.sub_(self.lr * grad)
            else:
                _adam_step(z, grad, exp_avg, exp_avg_sq, step, self.lr)

        finished_rows.append(rows)
        finished_z.append(z)
        out = scores.clone()
        out[torch.cat(finished_rows)] = torch.cat(finished_z).to(scores.dtype)
        return out


def _select(stats, index: torch.Tensor):
    return type(stats)(*(t[index] for t in stats))


def _adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
) -> None:
    """One torch.optim.Adam update (same operation order as torch's single-tensor implementation)."""
    beta1, beta2 = _ADAM_BETAS
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(_ADAM_EPS)
    # Masked entries (-inf) have grad 0, hence exp_avg 0: the update is 0 and they stay -inf.
    param.addcdiv_(exp_avg, denom, value=-step_size)
