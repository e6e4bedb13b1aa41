"""Entropy math shared by every EM method (one place computes entropy; everything else calls it)."""

from em_hf.ops.entropy import SoftmaxEntropy, entropy_grad, softmax_entropy, token_entropy

__all__ = ["SoftmaxEntropy", "entropy_grad", "softmax_entropy", "token_entropy"]
