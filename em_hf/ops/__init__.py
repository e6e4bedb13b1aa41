"""Entropy math shared by every EM method (one place computes entropy; everything else calls it),
and the dispatch of each op to the compiled kernels or PyTorch."""

from em_hf.ops._extension import backend, build
from em_hf.ops.entropy import (
    SoftmaxEntropy,
    TokenStatistics,
    entropy_backward,
    entropy_forward,
    entropy_grad,
    softmax_entropy,
    token_entropy,
    token_statistics,
)
from em_hf.ops.linear_entropy import linear_entropy_loss, linear_token_entropy
from em_hf.ops.logit_optimization import adaptive_temperature, em_inf

__all__ = [
    "SoftmaxEntropy",
    "TokenStatistics",
    "adaptive_temperature",
    "backend",
    "build",
    "em_inf",
    "entropy_backward",
    "entropy_forward",
    "entropy_grad",
    "linear_entropy_loss",
    "linear_token_entropy",
    "softmax_entropy",
    "token_entropy",
    "token_statistics",
]
