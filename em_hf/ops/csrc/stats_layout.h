// The per-row statistics of em_hf::entropy_forward: one float32 row of kStatsColumns values per
// logits row, shared by the CPU and CUDA kernels and mirrored in em_hf/ops/_torch_impl.py.
// With z the row, T the temperature, m = max z, S = sum exp((z - m) / T):
//   kEntropy        H = -sum p log p
//   kMax            m, in the logits' units (-inf for a row without mass)
//   kLogSum         log S (so lse = m / T + log S, and log p = (z - m) / T - log S without rounding
//                   log S away next to a large m / T)
//   kSelfCertainty  KL(U || p) = lse - mean(z / T) - log n over the n unmasked (finite) entries
//                   (0 when not requested, and for a row without mass)
//   kLabelLogProb   log p[label] (0 without labels or for label -100; -inf for a masked label)
//   kCount          n, the number of unmasked entries (0 when the self-certainty is not requested)
// The backward op takes the gradients of (H, self-certainty, label log-prob) as [rows, 3].
#pragma once

namespace em_hf {
namespace stats {
constexpr int kEntropy = 0;
constexpr int kMax = 1;
constexpr int kLogSum = 2;
constexpr int kSelfCertainty = 3;
constexpr int kLabelLogProb = 4;
constexpr int kCount = 5;
constexpr int kColumns = 6;
constexpr int kGradColumns = 3;  // grad of H, self-certainty, label log-prob
constexpr long long kIgnoreIndex = -100;
}  // namespace stats
}  // namespace em_hf
